"""``python -m benchmarks <scenario> [options]`` (from the repository root).

Prints one JSON object on stdout; progress goes to stderr.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.perf import scenarios
from benchmarks.perf.common import emit

from . import amqp as amqp_mod
from . import amqp_clients as amqp_clients_mod
from . import compare as compare_mod
from . import connect_rate as connect_rate_mod
from . import logs as logs_mod
from . import soak as soak_mod
from . import txn as txn_mod
from . import ui as ui_mod


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        help="use this running broker (wharf://user:pass@host:port) instead of starting one",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)

    tp = sub.add_parser("throughput", help="publish/confirm/end-to-end msg/s and latency")
    _broker_options(tp)
    tp.add_argument("--count", type=_positive, default=300_000)
    tp.add_argument("--size", type=_positive, default=100, help="body bytes (>= 8)")
    tp.add_argument("--producers", type=_positive, default=1)
    tp.add_argument("--consumers", type=_positive, default=1)
    tp.add_argument("--batch", type=_positive, default=500, help="messages per publish_many")
    tp.add_argument("--prefetch", type=_positive, default=2000)
    tp.add_argument("--rate", type=float, default=0.0, help="msg/s over all producers; 0 = max")
    tp.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=True)
    tp.add_argument(
        "--inflight", type=_positive, default=4, help="batches awaiting confirm per producer"
    )
    tp.add_argument("--raw", action="store_true", help="raw protocol client instead of the SDK")
    tp.add_argument(
        "--tls",
        nargs="?",
        const="benchmarks-tls",
        metavar="DIR",
        help="start the broker with TLS and connect with wharfs:// (certificates in DIR, "
        "made with trustme if missing; default ./benchmarks-tls); or pass a wharfs:// --url",
    )
    tp.add_argument("--persistent", action="store_true", help="durable queue + persistent messages")
    tp.add_argument(
        "--queue-arg",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="queue argument, e.g. x-max-priority=10 or x-message-ttl=60000 (repeatable)",
    )
    tp.add_argument(
        "--priorities", type=int, default=0, help="publish batches with priorities 0..N-1"
    )

    lat = sub.add_parser("latency", help="publish-to-deliver percentiles at a fixed rate")
    _broker_options(lat)
    lat.add_argument("--rate", type=_positive, default=10_000, help="messages per second")
    lat.add_argument("--seconds", type=float, default=10.0)
    lat.add_argument("--size", type=_positive, default=100)
    lat.add_argument("--prefetch", type=_positive, default=1000)
    lat.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=False)
    lat.add_argument("--raw", action="store_true", help="raw protocol client instead of the SDK")

    mem = sub.add_parser("mem", help="broker RSS per ready message")
    _broker_options(mem)
    mem.add_argument("--count", type=_positive, default=1_000_000)
    mem.add_argument("--size", type=_positive, default=100)
    mem.add_argument("--http-url", help="metrics base URL with --url (default host:8680)")
    mem.add_argument("--pid", type=int, help="broker pid with --url (default: port owner)")

    cmp_ = sub.add_parser("compare", help="RabbitMQ anchors and Wharf, alternately")
    cmp_.add_argument(
        "--scenarios",
        default=",".join(compare_mod.SCENARIOS),
        help="comma-separated subset of throughput,durable,latency,mem",
    )
    cmp_.add_argument("--runs", type=_positive, default=3)
    cmp_.add_argument("--anchors", default=compare_mod.DEFAULT_ANCHORS)
    cmp_.add_argument("--anchor-python", default=compare_mod.DEFAULT_ANCHOR_PYTHON)
    cmp_.add_argument("--count", type=_positive, default=300_000, help="throughput messages")
    cmp_.add_argument("--size", type=_positive, default=100)
    cmp_.add_argument("--rate", type=_positive, default=10_000, help="latency msg/s")
    cmp_.add_argument("--seconds", type=_positive, default=10, help="latency duration")
    cmp_.add_argument("--mem-count", type=_positive, default=1_000_000)
    cmp_.add_argument("--no-raw", action="store_true", help="skip the raw-protocol client")
    cmp_.add_argument("--no-sdk", action="store_true", help="skip the SDK client")
    sub.add_parser(
        "amqp",
        help="the RabbitMQ raw-client anchor on RabbitMQ and on Wharf's AMQP port (amqp --help)",
    )
    sub.add_parser(
        "aiopika",
        help="aio-pika natural code on RabbitMQ and on Wharf's AMQP port (aiopika --help)",
    )
    sub.add_parser("celery", help="10,000 no-op Celery tasks, RabbitMQ vs Wharf (celery --help)")
    sub.add_parser("logs", help="log topics vs Redis streams (logs --help for its options)")
    sub.add_parser("soak", help="hours of persistent publish/consume/ack (soak --help)")
    sub.add_parser(
        "connect_rate",
        help="connection set-ups per second: SCRAM, TLS+SCRAM vs RabbitMQ (connect_rate --help)",
    )
    sub.add_parser("ui", help="web UI page loads and tab CPU on a big broker (ui --help)")
    sub.add_parser("txn", help="transactional vs plain produce, read_committed (txn --help)")
    sub.add_parser("txn-soak", help="the transactions chaos test for N minutes (txn-soak --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["amqp"]:
        return amqp_mod.main(argv[1:])
    if argv[:1] == ["aiopika"]:
        return amqp_clients_mod.aiopika_main(argv[1:])
    if argv[:1] == ["celery"]:
        return amqp_clients_mod.celery_main(argv[1:])
    if argv[:1] == ["logs"]:
        return logs_mod.main(argv[1:])
    if argv[:1] == ["soak"]:
        return soak_mod.main(argv[1:])
    if argv[:1] == ["connect_rate"]:
        return connect_rate_mod.main(argv[1:])
    if argv[:1] == ["ui"]:
        return ui_mod.main(argv[1:])
    if argv[:1] in (["txn"], ["txn-soak"]):
        return txn_mod.main(argv[1:], argv[0])
    args = build_parser().parse_args(argv)
    result: dict[str, Any]
    if args.scenario == "throughput":
        result = scenarios.throughput(
            url=args.url,
            count=args.count,
            size=args.size,
            producers=args.producers,
            consumers=args.consumers,
            batch=args.batch,
            prefetch=args.prefetch,
            msg_rate=args.rate,
            confirm=args.confirm,
            inflight=args.inflight,
            raw=args.raw,
            timeout_s=args.timeout,
            persistent=args.persistent,
            queue_arguments={k: int(v) for k, v in (a.split("=", 1) for a in args.queue_arg)},
            priorities=args.priorities,
            tls_dir=args.tls,
        )
    elif args.scenario == "latency":
        result = scenarios.latency(
            url=args.url,
            msg_rate=args.rate,
            seconds=args.seconds,
            size=args.size,
            prefetch=args.prefetch,
            confirm=args.confirm,
            raw=args.raw,
            timeout_s=args.timeout,
        )
    elif args.scenario == "mem":
        result = scenarios.mem(
            url=args.url,
            http_url=args.http_url,
            pid=args.pid,
            count=args.count,
            size=args.size,
            timeout_s=args.timeout,
        )
    else:
        chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = sorted(set(chosen) - set(compare_mod.SCENARIOS))
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
        result = compare_mod.compare(
            scenarios=chosen,
            runs=args.runs,
            anchors=args.anchors,
            anchor_python=args.anchor_python,
            count=args.count,
            size=args.size,
            msg_rate=args.rate,
            seconds=args.seconds,
            mem_count=args.mem_count,
            raw=not args.no_raw,
            sdk=not args.no_sdk,
        )
    emit(result)
    return 0 if not result.get("timed_out") else 1


if __name__ == "__main__":
    sys.exit(main())
