"""protocol/vectors.json in both directions, and SPEC.md's tables against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from wharf.protocol import errors
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode, encode_array
from wharf.protocol.errors import NotImplementedByBroker

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "protocol"
VECTORS: list[dict[str, Any]] = json.loads((PROTOCOL_DIR / "vectors.json").read_text("utf-8"))[
    "vectors"
]
SPEC = (PROTOCOL_DIR / "SPEC.md").read_text("utf-8")


def from_json(value: Any) -> Any:
    """JSON form -> Python value: {"$bin": hex} becomes bytes."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def ids(vector: dict[str, Any]) -> str:
    return str(vector["name"])


def test_vector_file_shape() -> None:
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    assert len(VECTORS) >= 15
    for vector in VECTORS:
        assert set(vector) == {"name", "hex", "array"}
    covered = {v["array"][0] for v in VECTORS}
    assert set(F.SPECS) <= covered, "every frame type has a vector"


@pytest.mark.parametrize("vector", VECTORS, ids=ids)
def test_encode_matches_hex(vector: dict[str, Any]) -> None:
    assert encode_array(from_json(vector["array"])).hex() == vector["hex"]


@pytest.mark.parametrize("use_list", [True, False])
@pytest.mark.parametrize("vector", VECTORS, ids=ids)
def test_decode_matches_array(vector: dict[str, Any], use_list: bool) -> None:
    raws = FrameDecoder(use_list=use_list).feed(bytes.fromhex(vector["hex"]))
    assert len(raws) == 1
    assert to_json(raws[0]) == vector["array"]


@pytest.mark.parametrize("vector", VECTORS, ids=ids)
def test_decode_byte_by_byte(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    decoder = FrameDecoder(expect_handshake=True)
    out: list[Any] = []
    for i, byte in enumerate(F.HANDSHAKE + data):
        out.extend(decoder.feed(bytes([byte])))
        if i < len(F.HANDSHAKE) + len(data) - 1:
            assert out == []
    assert to_json(out) == [vector["array"]]


@pytest.mark.parametrize("vector", VECTORS, ids=ids)
def test_vector_parses(vector: dict[str, Any]) -> None:
    raw = from_json(vector["array"])
    if raw[0] not in F.SPECS:
        with pytest.raises(NotImplementedByBroker):
            F.parse(raw)
        return
    frame = F.parse(raw)
    assert F.TYPE_OF[type(frame)] == raw[0]
    # Re-encoding the typed frame gives the vector back, except where the vector left
    # optional trailing fields out (the typed frame spells out their defaults).
    full = encode_array(F.as_array(frame)).hex()
    if len(raw) - 1 == len(frame):
        assert full == vector["hex"]
    else:
        assert len(raw) - 1 < len(frame)


# -- SPEC.md agrees with the code ---------------------------------------------------------


def test_spec_error_table_matches_errors_py() -> None:
    rows = re.findall(
        r"^\| (\d{3}) \| (\w+) \| \**(yes|no)\** \| (yes|no) \|", SPEC, flags=re.MULTILINE
    )
    in_spec = {
        (int(code), name, fatal == "yes", retriable == "yes")
        for code, name, fatal, retriable in rows
    }
    in_code = {(s.code, s.name, s.fatal, s.retriable) for s in errors.ERROR_TABLE}
    assert in_spec == in_code


def constant_name(cls: type) -> str:
    """AuthOk -> AUTH_OK: the name of the frame type constant in frames.py."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


def test_spec_frame_table_matches_frames_py() -> None:
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (?:S→C|C→S|both) \|", SPEC, flags=re.MULTILINE)
    in_spec = {int(num): name for num, name in rows}
    in_code = {num: constant_name(spec.cls) for num, spec in F.SPECS.items()}
    assert in_spec == in_code
    for num, name in in_code.items():
        assert getattr(F, name) == num


def test_spec_worked_example_is_the_codec_output() -> None:
    frame = F.Publish(
        1, "events", "orders.eu", {"content_type": "text/plain", "persistent": True}, b"hello", 1
    )
    expected = encode(frame).hex(" ")
    block = SPEC.split("## 13. Worked example", 1)[1].split("```", 2)[1]
    assert " ".join(block.split()) == expected
