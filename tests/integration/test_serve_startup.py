"""``wharf serve`` refusing to start, as a subprocess: the exit code, the one message a user
reads, and a data directory left untouched.

- an unknown key in the TOML file or a misspelt WHARF_* variable: "did you mean";
- busy ports: both are checked before the data directory is touched (no LOCK, no
  directories created), and every busy port is named in one message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

WHARF_BIN: Final = Path(sys.executable).with_name("wharf")
# Refusals happen before recovery and listening: seconds, even on a loaded machine.
EXIT_TIMEOUT_S: Final = 60.0


@contextmanager
def listening_socket() -> Iterator[int]:
    """A port some other program listens on, for as long as the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``wharf serve ARGS`` to its exit, with no WHARF_* variables but ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    full_env["WHARF_AMQP_PORT"] = "0"  # no AMQP listener unless a test asks (5672 may be taken)
    full_env["WHARF_AMQPS_PORT"] = "0"
    full_env.update(env or {})
    return subprocess.run(
        [str(WHARF_BIN), "serve", "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def test_unknown_toml_key_exits_with_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "wharf.toml"
    config.write_text("prot = 5681\n")
    data = tmp_path / "data"
    result = serve("--config", str(config), "--data-dir", str(data))
    assert result.returncode != 0
    assert "unknown key 'prot' (did you mean 'port'?)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()


def test_misspelt_environment_variable_exits_with_did_you_mean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = serve("--data-dir", str(data), env={"WHARF_HTTP_PROT": "9999"})
    assert result.returncode != 0
    assert "WHARF_HTTP_PROT: no such setting (did you mean WHARF_HTTP_PORT?)" in result.stderr
    assert not data.exists()


def test_both_busy_ports_are_named_and_the_data_dir_is_not_touched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with listening_socket() as native, listening_socket() as http:
        result = serve("--port", str(native), "--http-port", str(http), "--data-dir", str(data))
    assert result.returncode != 0
    message = result.stderr
    assert f"native protocol port {native} on 127.0.0.1" in message, message
    assert f"HTTP port {http} on 127.0.0.1" in message, message
    assert len([line for line in message.splitlines() if "cannot listen" in line]) == 1
    assert "Traceback" not in message
    assert not data.exists()


def test_a_busy_http_port_leaves_an_existing_data_dir_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with listening_socket() as http:
        result = serve(
            "--port", str(free_port()), "--http-port", str(http), "--data-dir", str(data)
        )
    assert result.returncode != 0
    assert f"HTTP port {http} on 127.0.0.1" in result.stderr, result.stderr
    assert "native protocol port" not in result.stderr
    assert list(data.iterdir()) == []  # no LOCK, no messages/ or logs/


def test_a_busy_amqp_port_stops_serve_with_its_name(tmp_path: Path) -> None:
    # 5672 may be RabbitMQ's on this machine: `wharf serve` must say so and exit, not hang.
    data = tmp_path / "data"
    with listening_socket() as amqp:
        result = serve(
            "--port", str(free_port()), "--http-port", str(free_port()),
            "--amqp-port", str(amqp), "--data-dir", str(data),
        )  # fmt: skip
    assert result.returncode != 0
    assert f"AMQP port {amqp} on 127.0.0.1" in result.stderr, result.stderr
    assert "--amqp-port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()
