"""docs/security.md, "Worked example: a team on TLS": its blocks run in order, as written.

The shell blocks run under bash in a temporary directory (openssl makes the certificates,
``wharf ctl`` talks HTTPS); the TOML block is the broker's config file; the broker is
started here from that file (in this process, on ports the OS picks, substituted for
5681 and 8681 in the later blocks) where the doc says ``wharf serve --config wharf.toml``;
the Python block runs in a subprocess.  Then the audit log must show the mechanisms the
text promises.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from wharf.broker.config import load_settings
from wharf.broker.server import Broker

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
SECTION = "## Worked example: a team on TLS"
STEP_TIMEOUT_S = 120.0
_FENCE = re.compile(r"^```(\w*)\s*$")
SECRETS = {"OPS_PW": "0ps-pw-TEAM", "MONITOR_PW": "M0n-pw-TEAM", "APP_PW": "App-pw-TEAM"}


def section_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the section, in order."""
    text = DOC.read_text("utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        i += 1
        if match is None:
            continue
        body: list[str] = []
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        blocks.append((match.group(1), "\n".join(body) + "\n"))
    return blocks


async def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(STEP_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode == 0, f"{argv[:2]} failed:\n{err.decode()}\n{out.decode()}"
    return out.decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the example uses openssl")
async def test_worked_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = section_blocks()
    assert [lang for lang, _ in blocks] == ["sh", "toml", "sh", "sh", "python"]
    (_, certs), (_, toml), (_, serve), (_, admin), (_, clients) = blocks
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(SECRETS)
    monkeypatch.chdir(tmp_path)  # the config's paths are relative, as in the doc

    await run(["bash", "-euc", certs], tmp_path, env)
    (tmp_path / "wharf.toml").write_text(toml, "utf-8")
    assert serve.strip() == "wharf serve --config wharf.toml"
    settings = load_settings(
        "wharf.toml",
        {
            "tls_port": 0,
            "https_port": 0,
            "http_port": 0,
            "amqp_port": 0,
            "amqps_port": 0,
            "data_dir": str(tmp_path / "data"),
        },
        environ={},
    )
    broker = Broker(settings)
    await broker.start()
    try:
        admin = admin.replace("127.0.0.1:8681", f"127.0.0.1:{broker.https_port}")
        await run(["bash", "-euc", admin], tmp_path, env)
        clients = clients.replace("127.0.0.1:5681", f"127.0.0.1:{broker.tls_port}")
        out = await run([sys.executable, "-c", clients], tmp_path, env)
        assert "app: " in out and "billing.q" in out and "monitor: " in out
        users = {u.name for u in broker.authenticator.users.all()}
        assert users == {"ops", "monitor", "app"}  # guest removed
    finally:
        await broker.stop()
    lines = (tmp_path / "data" / "audit.log").read_text("utf-8").splitlines()
    logins = {
        (e["user"], e["mechanism"], e["protocol"])
        for e in map(json.loads, lines)
        if e["event"] == "auth.success"
    }
    assert ("app", "EXTERNAL", "native") in logins
    assert ("monitor", "SCRAM-SHA-256", "native") in logins
    assert ("ops", "BASIC", "http") in logins
