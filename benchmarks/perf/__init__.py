"""Load generators for the scenarios of ``python -m benchmarks``.

Producers and consumers run in separate processes; results are printed as JSON.
"""
