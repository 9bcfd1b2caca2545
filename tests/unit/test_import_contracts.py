"""The import-linter contracts name the SDK's modules one by one (the SDK is installed as
the top-level ``wharf`` package, beside ``wharf.broker`` and ``wharf.protocol``), so a
new SDK module must be added to them: this test fails until it is."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sdk_modules() -> set[str]:
    return {f"wharf.{p.stem}" for p in (ROOT / "client").glob("*.py") if p.stem != "__init__"}


def _forbidden(name_prefix: str) -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["name"].startswith(name_prefix):
            return set(contract["forbidden_modules"])
    raise AssertionError(f"no contract named {name_prefix!r}...")


def test_the_broker_contract_names_every_sdk_module() -> None:
    assert _sdk_modules() - _forbidden("the broker never imports the client SDK") == set()


def test_the_protocol_contract_names_every_sdk_module() -> None:
    assert _sdk_modules() - _forbidden("protocol imports nothing") == set()
