"""Guards on the tests themselves (tests/README.md, "Black-box tests").

Integration, durability and fuzz tests observe the broker and the SDK from outside:
through the SDK, the HTTP API, /metrics, the protocol (``FrameClient``, ``RawClient``)
or the fault-injection point of store/fsio.py.  This test fails when one of them
reaches into a private attribute (``x._name``, or ``setattr``/``getattr`` with such a
name) of an object that is not its own (``self``/``cls``), outside the allow-list below.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

TESTS: Final = Path(__file__).resolve().parent.parent
# White-box tests keep their own directory; everything else is checked.
UNCHECKED_DIRS: Final = frozenset({"unit"})
# The public API of named tuples (typed frames) starts with an underscore.
NAMEDTUPLE_API: Final = frozenset({"_replace", "_fields", "_make", "_asdict", "_field_defaults"})
# (file relative to tests/, attribute): private accesses that are not observation of
# the broker or the SDK.  Each says why.
# The fault injection of store/fsio.py (FAULTS) is public, and the monkeypatch.setattr
# calls that remain replace public names (tests/README.md).
ALLOWED: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # os._exit is the standard library's public way to end a process at once: the
        # hang watchdog's backstop, as pytest-timeout's own.
        ("loop_watchdog.py", "_exit"),
    }
)
ATTRIBUTE_FUNCTIONS: Final = frozenset({"setattr", "getattr", "hasattr", "delattr"})


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NAMEDTUPLE_API


def checked_files() -> list[Path]:
    return sorted(
        p
        for p in TESTS.rglob("*.py")
        if p.relative_to(TESTS).parts[0] not in UNCHECKED_DIRS and ".hypothesis" not in p.parts
    )


def private_accesses(source: str) -> list[tuple[int, str]]:
    """(line, attribute) of each private access in ``source`` not on self or cls."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            attr = node.args[1]
            if (
                name in ATTRIBUTE_FUNCTIONS
                and isinstance(attr, ast.Constant)
                and isinstance(attr.value, str)
                and private(attr.value)
            ):
                found.append((node.lineno, attr.value))
    return found


def test_non_unit_tests_touch_no_private_attributes() -> None:
    offences = [
        f"tests/{path.relative_to(TESTS)}:{line}: .{attr}"
        for path in checked_files()
        for line, attr in private_accesses(path.read_text())
        if (str(path.relative_to(TESTS)), attr) not in ALLOWED
    ]
    assert not offences, (
        "observe through the SDK, the HTTP API, /metrics or the protocol instead "
        "(tests/README.md); or, for a justified white-box case, add it to ALLOWED:\n"
        + "\n".join(offences)
    )


def test_the_guard_sees_what_it_guards() -> None:
    source = (
        "conn._request(1)\n"
        "broker.queues['q']._tail.index_bytes()\n"
        "monkeypatch.setattr(Conn, '_on_produce', f)\n"
        "self._state = 1\n"
        "frame._replace(request_id=2)\n"
        "obj.__class__\n"
    )
    assert sorted(private_accesses(source)) == [(1, "_request"), (2, "_tail"), (3, "_on_produce")]


def test_the_allow_list_has_no_stale_entries() -> None:
    present = {
        (str(path.relative_to(TESTS)), attr)
        for path in checked_files()
        for _line, attr in private_accesses(path.read_text())
    }
    assert present >= ALLOWED, ALLOWED - present
