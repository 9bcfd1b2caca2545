"""The suite's hang watchdog (tests/loop_watchdog.py): a test whose coroutine waits
forever fails alone, with the stack of every task of its loop, and the run goes on; a
loop blocked in C code still ends the run through pytest-timeout's backstop.

Each case runs pytest in a subprocess on a small test file, with only the plugins the
suite's asyncio tests use (pytest-asyncio, pytest-timeout, the watchdog).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

TESTS: Final = Path(__file__).resolve().parent.parent
TIMEOUT_S: Final = 4  # pytest-timeout's limit in the subprocess; the watchdog fires at 3 s
RUN_LIMIT_S: Final = 90.0  # the whole subprocess, startup included, on a loaded machine

HANGS: Final = """
import asyncio

async def waits_forever(fut):
    await fut

async def test_hangs():
    fut = asyncio.get_running_loop().create_future()
    asyncio.create_task(waits_forever(fut), name="helper-waiting")
    await fut

async def test_runs_after_the_hung_one():
    await asyncio.sleep(0)
"""

BLOCKS: Final = """
import time

async def test_blocks_the_loop():
    time.sleep(60)

async def test_never_reached():
    pass
"""

# A test that errors, then a fixture teardown that blocks: pytest-timeout has stopped its
# timer by then (pytest_exception_interact), so only the watchdog can end the run.
ERRORS_THEN_TEARDOWN_BLOCKS: Final = """
import time
import pytest

@pytest.fixture
def blocks_in_teardown():
    yield
    time.sleep(60)

def test_errors(blocks_in_teardown):
    raise RuntimeError("the test fails")

def test_never_reached():
    pass
"""


def run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_case.py").write_text(source)
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    env.pop("PYTEST_TIMEOUT", None)
    args = [
        sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
        "-p", "pytest_asyncio.plugin", "-p", "pytest_timeout", "-p", "loop_watchdog",
        "-o", "asyncio_mode=auto", "-o", "timeout_method=thread",
        f"--timeout={TIMEOUT_S}", "--rootdir", str(tmp_path),
        "--basetemp", str(tmp_path / "bt"), str(tmp_path / "test_case.py"),
    ]  # fmt: skip
    return subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S
    )


def test_a_hung_coroutine_fails_its_test_only_with_every_tasks_stack(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, HANGS)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "test_runs_after_the_hung_one PASSED" in out, out
    # The dump names the test and shows each task where it waits, the helper too.
    assert "test watchdog: test_case.py::test_hangs still running" in out, out
    assert "helper-waiting" in out and "in waits_forever" in out, out
    assert "in test_hangs" in out, out
    assert "CancelledError: test watchdog" in out, out


def test_a_loop_blocked_in_c_code_still_ends_the_run(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, BLOCKS)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "+ Timeout +" in out, out
    assert "time.sleep(60)" in out, out
    assert "test_never_reached" not in out, out


def test_a_teardown_hung_after_an_error_still_ends_the_run(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, ERRORS_THEN_TEARDOWN_BLOCKS)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "test_case.py::test_errors still running after" in out, out
    assert "ending the run" in out, out
    assert "time.sleep(60)" in out or "blocks_in_teardown" in out, out
    assert "test_never_reached" not in out, out
