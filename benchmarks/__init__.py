"""Wharf benchmarks: ``python -m benchmarks <scenario>`` prints one JSON object on stdout.

Scenarios (see benchmarks/README.md): ``throughput`` (SDK or ``--raw`` protocol client),
``latency`` (fixed rate, publish-to-deliver percentiles), ``mem`` (broker RSS per ready
message) and ``compare`` (the same against the RabbitMQ anchors, run alternately).
Benchmarks never run in the test suite.
"""
