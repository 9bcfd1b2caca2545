"""Records every differential scenario against a running AMQP server (RabbitMQ 3.10).

    python -m tests.integration.amqp.differential.record [--port 5672] [--out FILE] [NAME...]

``make amqp-recordings`` starts RabbitMQ and runs this from the repository root. Each
scenario's observation is normalised (normalise.py) and written to
recordings/rabbitmq-3.10.json with the server's product and version; what a scenario
declared (``diff.<scenario>.*`` queues and exchanges) is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pamqp import commands as C

from .normalise import normalise
from .observer import Observer
from .scenarios import SCENARIOS, run_scenario

RECORDING = Path(__file__).parent / "recordings" / "rabbitmq-3.10.json"


async def server_identity(port: int) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    obs = await Observer.connect(port, events)
    await obs.handshake(record=True)
    await obs.close()
    props = events[0]["server_properties"]
    return {k: props.get(k) for k in ("product", "version", "platform")}


async def clean_up(port: int, queues: list[str], exchanges: list[str]) -> None:
    """Deletes what a scenario declared, each on a fresh channel (a refusal closes it)."""
    if not queues and not exchanges:
        return
    obs = await Observer.connect(port, [])
    await obs.handshake()
    todo = [("q", q) for q in queues] + [("x", x) for x in exchanges]
    for channel, (kind, name) in enumerate(todo, start=1):
        await obs.open_channel(channel)
        if kind == "q":
            await obs.call(channel, C.Queue.Delete(queue=name))
        else:
            await obs.call(channel, C.Exchange.Delete(exchange=name))
    await obs.close()


async def record(port: int, names: list[str], out: Path, kept: dict[str, Any]) -> int:
    existing = {k: v for k, v in kept.items() if k in SCENARIOS}  # removed scenarios go
    identity = await server_identity(port)
    if not str(identity.get("product", "")).startswith("RabbitMQ"):
        print(f"refusing to record: the server on port {port} is {identity}", file=sys.stderr)
        return 2
    failed = 0
    for name in names or list(SCENARIOS):
        try:
            s = await run_scenario(name, port)
        except Exception as exc:  # a broken scenario must not lose the others' recordings
            print(f"{name}: FAILED {exc!r}", file=sys.stderr)
            failed += 1
            continue
        await clean_up(port, s.queues, s.exchanges)
        existing[name] = normalise(s.events)
        print(f"{name}: {len(s.events)} events")
    doc = {
        "server": identity,
        "recorded_with": "tests/integration/amqp/differential/record.py",
        "scenarios": dict(sorted(existing.items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a one-shot tool)
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")  # noqa: ASYNC240
    print(f"wrote {len(existing)} scenarios to {out}; {failed} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--out", type=Path, default=RECORDING)
    parser.add_argument("names", nargs="*", help="only these scenarios (others kept)")
    args = parser.parse_args()
    kept: dict[str, Any] = {}
    if args.names and args.out.exists():
        kept = json.loads(args.out.read_text())["scenarios"]
    return asyncio.run(record(args.port, args.names, args.out, kept))


if __name__ == "__main__":
    sys.exit(main())
