"""Durable definitions: exchanges, queues and bindings, written atomically.

Bindings name their destination with ``destination_type`` "queue", "exchange" or
"topic" (a log topic; restored once the topics are recovered, dropped if it is gone).

``<data_dir>/definitions.json`` is replaced as a whole on every change to a durable
definition: write a temporary file, fsync it, rename it over the old one, fsync the
directory.  A crash leaves either the old or the new file, never a mix; the directory
is fsynced again before the file is read at start (a kill -9 may leave the rename in
the page cache only).  Binary
argument values are written as ``{"$bin": "<hex>"}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from .fsio import fsync_dir, write_atomically

DEFINITIONS_FILE: Final = "definitions.json"
FORMAT_VERSION: Final = 1


def _encode(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$bin": obj.hex()}
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and "$bin" in obj and isinstance(obj["$bin"], str):
            return bytes.fromhex(obj["$bin"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def save_definitions(data_dir: Path, definitions: dict[str, Any]) -> None:
    doc = {"version": FORMAT_VERSION, **definitions}
    data = json.dumps(_encode(doc), indent=1, sort_keys=True).encode()
    # 0o600: the document holds password hashes of runtime users.
    write_atomically(data_dir / DEFINITIONS_FILE, data, mode=0o600)


def load_definitions(data_dir: Path) -> dict[str, Any]:
    path = data_dir / DEFINITIONS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"version": FORMAT_VERSION, "exchanges": [], "queues": [], "bindings": []}
    # Its contents were fsynced before the rename; the rename itself may be in the page
    # cache only after a kill -9.  Durable before this run declares what it names (and
    # stores messages for it), so a power loss later cannot take it back.
    fsync_dir(data_dir)
    doc = _decode(json.loads(raw))
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported definitions format")
    doc.setdefault("exchanges", [])
    doc.setdefault("queues", [])
    doc.setdefault("bindings", [])
    return doc
