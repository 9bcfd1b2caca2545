"""fsio: the one fault-injection point of durable writes and fsyncs (``FAULTS``)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

import wharf.broker
from wharf.broker.store import fsio
from wharf.broker.store.fsio import FAULTS, FaultPoint

BROKER_DIR = Path(wharf.broker.__file__).parent
DISK_ERROR = OSError(errno.EIO, "injected I/O error")


def test_injected_failure_hits_only_its_op_and_directory(tmp_path: Path) -> None:
    failing_dir = tmp_path / "messages"
    failing_dir.mkdir()
    other = tmp_path / "other.bin"
    target = failing_dir / "0001.seg"
    with FAULTS.failing("fsync", DISK_ERROR, under=failing_dir):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fsio.write_all(fd, b"written", target)  # writes still work
            with pytest.raises(OSError) as info:
                fsio.fsync(fd, target)
            assert info.value is DISK_ERROR
        finally:
            os.close(fd)
        with pytest.raises(OSError):
            fsio.fsync_dir(failing_dir)
        fsio.write_atomically(other, b"elsewhere")  # outside the directory: unaffected
    # After the block the same fsync succeeds.
    fd = os.open(target, os.O_RDONLY)
    try:
        fsio.fsync(fd, target)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"written" and other.read_bytes() == b"elsewhere"


def test_injected_write_failure_leaves_the_file_unwritten(tmp_path: Path) -> None:
    target = tmp_path / "offsets.log"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with FAULTS.failing("write", DISK_ERROR, under=target), pytest.raises(OSError):
            fsio.write_all(fd, b"lost", target)
        with FAULTS.failing("write", DISK_ERROR, under=target), pytest.raises(OSError):
            fsio.pwrite_all(fd, b"lost", 0, target)
    finally:
        os.close(fd)
    assert target.read_bytes() == b""


def test_sync_log_records_durable_lengths(tmp_path: Path) -> None:
    log = tmp_path / "sync.log"
    faults = FaultPoint(str(log), write_delay_ms=0)
    faults.record_synced([(tmp_path / "a", 10), (tmp_path / "b", 0)])
    faults.record_synced([])
    assert log.read_text() == f"{tmp_path / 'a'} 10\n{tmp_path / 'b'} 0\n"
    FaultPoint(None, write_delay_ms=0).record_synced([(tmp_path / "c", 1)])  # off: no file
    assert log.read_text().count("\n") == 2


def test_environment_hooks_are_read_in_fsio_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fsio.SYNC_LOG_ENV, "/tmp/x.log")
    monkeypatch.setenv(fsio.WRITE_DELAY_ENV, "250")
    faults = FaultPoint.from_environ()
    assert faults.sync_log == "/tmp/x.log" and faults.write_delay_s == 0.25
    # No other broker module writes or fsyncs durable files around fsio, or reads the
    # environment (config.py reads the WHARF_<setting> variables).
    io_bypass = re.compile(r"os\.(fsync|write|pwrite)\(")
    env_read = re.compile(r"os\.environ|getenv\(")
    offenders = [
        f"{path.relative_to(BROKER_DIR)}:{n}"
        for path in sorted(BROKER_DIR.rglob("*.py"))
        if path.name != "fsio.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if io_bypass.search(line) or (path.name != "config.py" and env_read.search(line))
    ]
    assert not offenders, f"durable I/O bypassing wharf.broker.store.fsio: {offenders}"
