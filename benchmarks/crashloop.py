"""``python -m benchmarks.crashloop --cycles 300``: the kill -9 crash loop of
``tests/durability`` for as many cycles as you like.

Each cycle starts ``wharf serve`` on the data directory the previous one left, runs
publishers (``publish_many``, persistent, confirmed) and consumers (ack most, requeue
some) for a random 0.2-1.5 s, then kills the broker with SIGKILL; ``--power-loss``
also cuts every segment back to what was fsynced.  At the end every queue is drained
and the run judged.  Prints one JSON object on stdout (progress goes to stderr):
``cycles``, ``confirmed``, ``delivered`` (distinct ids), ``lost`` (confirmed, never
delivered: must be 0), ``duplicates``, ``seconds`` and more.  Exits 1 if any
durability promise was broken (the ``failures`` field says which).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.perf.common import emit, log, run_async

# The crash loop lives with the durability tests, which run it for a few dozen cycles.
_HARNESS_DIR = Path(__file__).resolve().parent.parent / "tests" / "durability"
if str(_HARNESS_DIR) not in sys.path:
    sys.path.insert(0, str(_HARNESS_DIR))

from harness import (  # noqa: E402
    KILL_AFTER_MAX_S,
    KILL_AFTER_MIN_S,
    CrashConfig,
    CrashLoop,
    CrashReport,
)

PROGRESS_EVERY_CYCLES = 10


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.crashloop", description=__doc__)
    p.add_argument("--cycles", type=_positive, default=300, help="kill -9 cycles")
    p.add_argument("--publishers", type=_positive, default=3, help="publisher connections")
    p.add_argument("--queues", type=int, choices=range(1, 8), default=3, help="durable queues")
    p.add_argument("--seed", type=int, help="random seed (default: a random one, reported)")
    p.add_argument(
        "--power-loss",
        action="store_true",
        help="after each kill, cut segments back to their last fsynced length",
    )
    p.add_argument("--kill-min", type=float, default=KILL_AFTER_MIN_S, help="seconds")
    p.add_argument("--kill-max", type=float, default=KILL_AFTER_MAX_S, help="seconds")
    p.add_argument(
        "--work-dir",
        type=Path,
        help="keep the data directory, sync log and broker logs here (default: a "
        "temporary directory, removed unless the run failed)",
    )
    return p


def _progress(report: CrashReport) -> None:
    if report.cycles % PROGRESS_EVERY_CYCLES == 0:
        t = report.ledger.totals()
        log(
            f"soak: {report.cycles}/{report.config.cycles} cycles, {t['confirmed']} confirmed, "
            f"{t['delivered']} delivered, {t['duplicates']} duplicates, "
            f"{report.seconds:.0f} s"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.kill_min <= args.kill_max:
        raise SystemExit("--kill-min must be > 0 and <= --kill-max")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    config = CrashConfig(
        cycles=args.cycles,
        seed=seed,
        publishers=args.publishers,
        queues=args.queues,
        power_loss=args.power_loss,
        kill_after_min_s=args.kill_min,
        kill_after_max_s=args.kill_max,
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="wharf-soak-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    log(f"soak: seed {seed}, {args.cycles} cycles, work dir {work_dir}")
    loop = CrashLoop(work_dir, config, on_cycle=_progress)
    result: dict[str, Any]
    try:
        report = run_async(loop.run())
    except AssertionError as exc:  # a cycle overran its time budget
        report = loop.report
        result = {**report.summary(), "failures": [*report.failures(), str(exc)]}
    else:
        result = {**report.summary(), "failures": report.failures()}
    result["work_dir"] = str(work_dir)
    failed = bool(result["failures"])
    if failed:
        log(f"soak: FAILED; data, sync log and broker logs kept in {work_dir}")
    elif args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
        result["work_dir"] = None
    emit(result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
