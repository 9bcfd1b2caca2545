"""Every Python code block in README.md and docs/*.md runs as written against a real broker.

Each block runs in its own Python subprocess (with a timeout) against a broker started
by the test on port 0 with its data directory under ``tmp_path``.  The blocks are written
for the default ports, so ``127.0.0.1:5680``, ``127.0.0.1:5672`` (AMQP) and
``127.0.0.1:8680`` in a block's text are replaced by the test broker's ports before it
runs.  A block that cannot run alone (it
uses names defined elsewhere, or top-level ``await``) is marked as a fragment with
``<!-- fragment -->`` on the line before its fence; it is only checked to be there
(tests/README.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from wharf.broker.server import Broker

from .amqp.raw_amqp import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT_MARKER = "<!-- fragment -->"
BLOCK_TIMEOUT_S = 60.0
DEFAULT_NATIVE_ADDRESS = "127.0.0.1:5680"
DEFAULT_AMQP_ADDRESS = "127.0.0.1:5672"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8680"
_FENCE = re.compile(r"^```(\w*)\s*$")


class Block(NamedTuple):
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if match.group(1) != "python":
            continue
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        fragment = before >= 0 and lines[before].strip() == FRAGMENT_MARKER
        blocks.append(Block(path, start + 1, "\n".join(body) + "\n", fragment))
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in python_blocks(path)]
RUNNABLE = [b for b in ALL_BLOCKS if not b.fragment]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"amqp_port": free_port()}  # the AMQP blocks (pika) need the listener


def test_the_docs_have_python_blocks_and_most_run() -> None:
    # Guards the parser: if it found nothing, every test below would pass vacuously.
    assert len(ALL_BLOCKS) >= 20
    assert len(RUNNABLE) >= 5


def test_fragment_markers_sit_before_python_blocks() -> None:
    marked = sum(b.fragment for b in ALL_BLOCKS)
    markers = sum(p.read_text(encoding="utf-8").count(FRAGMENT_MARKER) for p in DOC_FILES)
    assert markers == marked, "a fragment marker that is not right before a ```python fence"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
async def test_block_runs(block: Block, broker: Broker, tmp_path: Path) -> None:
    code = block.code.replace(DEFAULT_NATIVE_ADDRESS, f"127.0.0.1:{broker.port}")
    code = code.replace(DEFAULT_HTTP_ADDRESS, f"127.0.0.1:{broker.http_port}")
    code = code.replace(DEFAULT_AMQP_ADDRESS, f"127.0.0.1:{broker.amqp_port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Awaited, so this loop keeps serving the broker the block talks to.
        async with asyncio.timeout(BLOCK_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{block.id} did not end within {BLOCK_TIMEOUT_S} s")
    assert proc.returncode == 0, (
        f"{block.id} failed (exit {proc.returncode}):\n{err.decode()}\n{out.decode()}"
    )
