"""The one normaliser of the differential harness: what legitimately varies between two
AMQP servers (or two runs of one) is replaced by a fixed token before comparing.

- server-generated names: ``amq.gen-<random>`` -> ``amq.gen-*``, consumer tags
  ``amq.ctag-<random>`` -> ``amq.ctag-*``, direct reply-to names
  ``amq.rabbitmq.reply-to.<token>`` -> ``amq.rabbitmq.reply-to.*`` (in every string,
  reply texts included);
- connection.start: ``server_properties`` keeps its key set and the ``capabilities``
  table (values such as product, version, platform, copyright are the server's own);
  ``mechanisms`` and ``locales`` become sorted lists;
- connection.tune: ``heartbeat`` becomes ``"*"`` (a server setting, 60 s by default on
  RabbitMQ, ``heartbeat_s`` on Wharf); channel_max and frame_max are compared as they are;
- publisher confirms (basic.ack / basic.nack from the server): ``multiple`` -> ``"*"``,
  a basic.nack's ``requeue`` -> ``"*"``: a server may confirm one tag with multiple=true
  (RabbitMQ coalesces confirms as timing allows), and requeue means nothing server-side;
- timestamps a server writes itself (``time`` inside ``x-death``) -> ``"*"``;
- ``Connection.Close``'s reply text after a hard error keeps its code word and text.

Everything else (methods, channels, reply codes and texts, delivery tags, redelivered
flags, message and consumer counts, properties, bodies) is compared as it is.
"""

from __future__ import annotations

import re
from typing import Any

GENERATED = (
    (re.compile(r"amq\.gen-[A-Za-z0-9_\-]+"), "amq.gen-*"),
    (re.compile(r"amq\.ctag-[A-Za-z0-9_\-]+"), "amq.ctag-*"),
    (re.compile(r"amq\.rabbitmq\.reply-to\.[A-Za-z0-9_.\-=+/]+"), "amq.rabbitmq.reply-to.*"),
)


def _text(value: str) -> str:
    for pattern, token in GENERATED:
        value = pattern.sub(token, value)
    return value


def _value(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        if key == "x-death":
            return value
        return {k: _value(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key == "x-death":
            return [_x_death(v) for v in value]
        return [_value(v) for v in value]
    return value


def _x_death(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return _value(entry)
    return {k: ("*" if k == "time" else _value(v, k)) for k, v in entry.items()}


def normalise_event(event: dict[str, Any]) -> dict[str, Any]:
    out = {k: _value(v, k) for k, v in event.items()}
    if out.get("m") == "Connection.Start":
        server = event.get("server_properties") or {}
        if set(server) != {"keys", "capabilities"}:  # not normalised yet
            out["server_properties"] = {
                "keys": sorted(server),
                "capabilities": server.get("capabilities"),
            }
        for field in ("mechanisms", "locales"):
            raw = event.get(field)
            if isinstance(raw, list):
                continue
            if isinstance(raw, dict) and "$bytes" in raw:
                raw = bytes.fromhex(raw["$bytes"]).decode()
            out[field] = sorted(str(raw).split())
    elif out.get("m") == "Connection.Tune":
        out["heartbeat"] = "*"
    elif out.get("m") in ("Basic.Ack", "Basic.Nack"):
        out["multiple"] = "*"
        if "requeue" in out:
            out["requeue"] = "*"
    return out


def normalise(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The observation without what legitimately varies; normalise(normalise(x)) ==
    normalise(x), so recordings are stored normalised and normalised again when read."""
    return [normalise_event(e) for e in events]


def streams(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The observation as one ordered stream per connection and channel ("c0.ch1").

    AMQP orders a channel's frames, not frames of different channels or connections (a
    queue.delete-ok on one channel and the basic.cancel it causes on another may come in
    either order), so the harness compares these streams, not the interleaving. An event
    without a channel (a note, the socket's end, a timeout) belongs to its connection's
    "c0.-" stream.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        conn = event.get("c", 0)
        key = f"c{conn}.ch{event['ch']}" if "ch" in event else f"c{conn}.-"
        out.setdefault(key, []).append({k: v for k, v in event.items() if k not in ("c", "ch")})
    return out
