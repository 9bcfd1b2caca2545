"""Load generators shared by `wharf bench` and benchmarks/.

Producers and consumers run in separate processes; results are printed as JSON.
"""
