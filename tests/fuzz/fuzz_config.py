"""Fuzz target: the config loader (broker/config.py), TOML file and WHARF_* variables.

Input: the bytes of a config file, then optionally a NUL byte and the environment, one
``NAME=value`` per line.  ``load_settings`` reads the file as ``wharf serve --config``
does (the bytes are written to an unlinked temporary file) with that
environment, then the effective settings are described as ``wharf serve`` logs them.
Fine: Settings, or ConfigError.  Anything else is a crash: a broker that will not start
must say which key is wrong, not print a traceback.
"""

from __future__ import annotations

import atexit
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from wharf.broker.config import _CHECKS, ConfigError, describe, load_settings

TARGET: Final = "config"
MAX_LEN: Final = 4 * 1024
ROOT: Final = Path(__file__).parents[2]
# The example config files of the repository (the seeds): deploy/ and the docs' blocks.
EXAMPLES: Final = (ROOT / "deploy" / "wharf.toml",)
DOCS_WITH_TOML: Final = (ROOT / "README.md", ROOT / "docs" / "configuration.md")

# On tmpfs where there is one: writing the file is most of the cost of an execution.
# The file is unlinked at once and read back through /proc/self/fd: libFuzzer ends the
# process with exit(), which runs no Python clean-up.
SHM: Final = Path("/dev/shm")
_file = tempfile.TemporaryFile(dir=SHM if SHM.is_dir() else None)  # noqa: SIM115  # kept open
atexit.register(_file.close)
_config = f"/proc/self/fd/{_file.fileno()}"


def one_input(data: bytes) -> None:
    toml, _, env_text = data.partition(b"\x00")
    os.ftruncate(_file.fileno(), 0)
    os.pwrite(_file.fileno(), toml, 0)
    environ: dict[str, str] = {}
    for line in env_text.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and name and "\x00" not in value:
            environ[name] = value
    try:
        settings = load_settings(_config, {}, environ=environ)
    except ConfigError:
        return
    json.dumps(describe(settings))


def _toml_blocks(text: str) -> Iterator[str]:
    block: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if block is None and stripped == "```toml":
            block = []
        elif block is not None and stripped == "```":
            yield "\n".join(block) + "\n"
            block = None
        elif block is not None:
            block.append(line.strip())
    return


def seeds() -> Iterator[bytes]:
    """The example config files, with and without an environment."""
    texts = [p.read_text() for p in EXAMPLES]
    for doc in DOCS_WITH_TOML:
        texts.extend(_toml_blocks(doc.read_text()))
    for text in texts:
        yield text.encode()
        yield text.encode() + b"\x00WHARF_PORT=5690\nWHARF_LOOPBACK_USERS=guest,ops\n"
    yield b"\x00WHARF_HEARTBEAT_S=30\nWHARF_DEFAULT_USER_ENABLED=off\nWHARF_HTTP_HOST=\n"
    yield b"\x00WHARF_MEMORY_HIGH_WATERMARK=0.5\nWHARF_HANDSHAKE_TIMEOUT_S=2.5\nWHARF_PROT=1\n"


def dictionary() -> list[bytes]:
    words: list[bytes] = []
    for key in _CHECKS:
        words += [key.encode() + b" = ", b"WHARF_" + key.upper().encode() + b"="]
    return [*words, b"[[users]]", b'"scrypt$16384$8$1$', b"true", b"1e999", b"nan", b"\x00"]
