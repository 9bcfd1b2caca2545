"""The blocking client (client/sync.py) has a twin of every public verb of the async
SDK, with the same parameters, so the two cannot drift apart."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest

from wharf import sync
from wharf.connection import Connection, connect
from wharf.consumer import Consumer
from wharf.message import Message
from wharf.stream import Stream

# Public names of an async class with no blocking twin, and why.
NOT_TWINNED: dict[type, dict[str, str]] = {
    Connection: {
        "producer": "an idempotent Producer is an async object: use it on SyncConnection.loop",
        "transactional_producer": "a TransactionalProducer is an async object: use it on "
        "SyncConnection.loop",
    },
    Consumer: {
        "on_deliver": "DeliverySink: called by the connection core",
        "on_cancelled": "DeliverySink: called by the connection core",
        "on_ack_error": "DeliverySink: called by the connection core",
        "on_connection_lost": "DeliverySink: called by the connection core",
        "suspended": "reconnect machinery",
        "end": "reconnect machinery",
        "resume": "reconnect machinery",
    },
    Stream: {
        "start": "SyncConnection.subscribe starts the stream",
        "records_arrived": "Fetcher listener: called by the fetcher",
        "out_of_range": "Fetcher listener: called by the fetcher",
        "partition_failed": "Fetcher listener: called by the fetcher",
        "fetch_failed": "Fetcher listener: called by the fetcher",
    },
    Message: {},
}
TWINS: dict[type, type] = {
    Connection: sync.SyncConnection,
    Consumer: sync.SyncConsumer,
    Stream: sync.SyncStream,
    Message: sync.SyncMessage,
}
DATA = (property, types.MemberDescriptorType, sync._Forward)
# Keyword-only parameters a blocking method adds to its twin's: how long iteration
# waits for the next item (the async SDK uses asyncio.timeout for that).
EXTRA: dict[tuple[type, str], set[str]] = {
    (sync.SyncConnection, "consume"): {"timeout"},
    (sync.SyncConnection, "subscribe"): {"timeout"},
}


def _public(cls: type) -> list[str]:
    return sorted(name for name in dir(cls) if not name.startswith("_"))


def _params(fn: Any) -> list[inspect.Parameter]:
    """Parameters without ``self``, unwrapped from the generated twins."""
    return list(inspect.signature(fn).parameters.values())[1:]


def _compare(async_fn: Any, blocking_fn: Any, extra: set[str]) -> None:
    mine = [p for p in _params(blocking_fn) if p.name not in extra]
    theirs = _params(async_fn)
    if mine and mine[-1].kind is inspect.Parameter.VAR_KEYWORD and theirs != mine:
        # ``**options`` forwarded whole: the named ones must match, the rest must be
        # keyword-only in the async method (so they can travel in **options).
        named = mine[:-1]
        assert theirs[: len(named)] == named
        rest = theirs[len(named) :]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), rest
        return
    assert mine == theirs
    for name in extra:
        param = inspect.signature(blocking_fn).parameters[name]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY


def _cases() -> list[tuple[type, str]]:
    return [(cls, name) for cls in TWINS for name in _public(cls) if name not in NOT_TWINNED[cls]]


@pytest.mark.parametrize(("cls", "name"), _cases(), ids=[f"{c.__name__}.{n}" for c, n in _cases()])
def test_every_public_verb_has_a_blocking_twin_with_the_same_parameters(
    cls: type, name: str
) -> None:
    twin = TWINS[cls]
    assert hasattr(twin, name), f"{twin.__name__} has no '{name}' (or list it in NOT_TWINNED)"
    async_attr = inspect.getattr_static(cls, name)
    blocking_attr = inspect.getattr_static(twin, name)
    if isinstance(async_attr, DATA):  # a property or a slot: read-only data
        assert isinstance(blocking_attr, DATA), f"{twin.__name__}.{name} is not data"
        return
    _compare(getattr(cls, name), getattr(twin, name), EXTRA.get((twin, name), set()))


def test_exclusions_name_real_members() -> None:
    for cls, names in NOT_TWINNED.items():
        for name in names:
            assert hasattr(cls, name), f"{cls.__name__}.{name} is gone: drop it from NOT_TWINNED"


def test_blocking_connect_takes_the_async_arguments_plus_call_timeout() -> None:
    params = list(inspect.signature(sync.connect).parameters.values())
    assert [p for p in params if p.name != "call_timeout"] == list(
        inspect.signature(connect).parameters.values()
    )
