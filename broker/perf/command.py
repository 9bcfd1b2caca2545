"""``wharf bench``: load-test a running broker, like RabbitMQ's PerfTest.

Producers and consumers run in separate processes through the public SDK (or the raw
protocol with --raw) and one JSON object is printed.  ``python -m benchmarks`` in a
source checkout runs the same scenarios against a broker it starts itself.
"""

from __future__ import annotations

import sys

import click

from . import scenarios
from .common import emit

DEFAULT_URL = "wharf://guest:guest@127.0.0.1:5680"


@click.group("bench")
def bench() -> None:
    """Load-test a running broker; prints JSON."""


@bench.command("throughput")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WHARF_URL")
@click.option("--count", default=300_000, show_default=True, type=click.IntRange(1))
@click.option("--size", default=100, show_default=True, type=click.IntRange(8), help="body bytes")
@click.option("--producers", default=1, show_default=True, type=click.IntRange(1))
@click.option("--consumers", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--batch",
    default=500,
    show_default=True,
    type=click.IntRange(1),
    help="messages per publish_many",
)
@click.option("--prefetch", default=2000, show_default=True, type=click.IntRange(1))
@click.option(
    "--rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="msg/s over all producers; 0 = as fast as possible",
)
@click.option("--confirm/--no-confirm", default=True, show_default=True)
@click.option(
    "--inflight",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="publish_many batches awaiting confirm per producer",
)
@click.option("--raw", is_flag=True, help="raw protocol client instead of the SDK")
@click.option(
    "--persistent", is_flag=True, help="durable queue, persistent messages (fsync before confirm)"
)
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(0))
def throughput_cmd(
    url: str,
    count: int,
    size: int,
    producers: int,
    consumers: int,
    batch: int,
    prefetch: int,
    rate: float,
    confirm: bool,
    inflight: int,
    raw: bool,
    persistent: bool,
    timeout: float,
) -> None:
    """Publish/confirm/end-to-end msg/s and publish-to-deliver latency."""
    result = scenarios.throughput(
        url=url,
        count=count,
        size=size,
        producers=producers,
        consumers=consumers,
        batch=batch,
        prefetch=prefetch,
        msg_rate=rate,
        confirm=confirm,
        inflight=inflight,
        raw=raw,
        timeout_s=timeout,
        persistent=persistent,
    )
    emit(result)
    if result.get("timed_out"):
        sys.exit(1)


@bench.command("latency")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="WHARF_URL")
@click.option("--rate", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--size", default=100, show_default=True, type=click.IntRange(8))
@click.option("--prefetch", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--confirm/--no-confirm", default=False, show_default=True)
@click.option("--raw", is_flag=True)
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(0))
def latency_cmd(
    url: str,
    rate: int,
    seconds: float,
    size: int,
    prefetch: int,
    confirm: bool,
    raw: bool,
    timeout: float,
) -> None:
    """p50/p99/p99.9 publish-to-deliver latency at a fixed rate."""
    result = scenarios.latency(
        url=url,
        msg_rate=rate,
        seconds=seconds,
        size=size,
        prefetch=prefetch,
        confirm=confirm,
        raw=raw,
        timeout_s=timeout,
    )
    emit(result)
    if result.get("timed_out"):
        sys.exit(1)
