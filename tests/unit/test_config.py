"""Settings loading (defaults < TOML < env < flags), validation, logging, `wharf config`."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from wharf.broker.cli.main import main
from wharf.broker.config import (
    MIB,
    ConfigError,
    Settings,
    UserConfig,
    configure_logging,
    describe,
    load_settings,
    misspelt_env_vars,
    suggest_key,
    unknown_key_message,
)
from wharf.broker.security.auth import hash_password

# One real hash for the whole module: scrypt is deliberately slow.
HASH = hash_password("s3cret")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("WHARF_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wharf.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    s = load_settings(None, {})
    assert s == Settings()
    assert (s.host, s.port, s.http_port, s.data_dir) == ("0.0.0.0", 5680, 8680, "./data")
    assert s.max_frame_bytes == 132 * MIB and s.max_message_bytes == 128 * MIB
    assert s.max_connections == 10_000 and s.max_consumers_per_connection == 1_024
    assert s.heartbeat_s == 60 and s.ack_timeout_ms == 1_800_000
    assert s.handshake_timeout_s == 10.0 and s.shutdown_timeout_s == 10.0
    assert s.loopback_users == ["guest"] and s.default_user_enabled is True
    assert s.users == [] and s.http_host is None and s.http_bind_host == "0.0.0.0"


def test_precedence_defaults_toml_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'port = 1001\nhttp_port = 2001\ndata_dir = "/toml"\nheartbeat_s = 5\n')
    monkeypatch.setenv("WHARF_PORT", "1002")
    monkeypatch.setenv("WHARF_HTTP_PORT", "2002")
    s = load_settings(path, {"port": 1003, "http_port": None, "data_dir": None})
    assert s.port == 1003  # flag beats env
    assert s.http_port == 2002  # env beats toml; None flag means "not given"
    assert s.data_dir == "/toml"  # toml beats default
    assert s.heartbeat_s == 5
    assert s.max_connections == 10_000  # default


def test_env_value_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHARF_MAX_MESSAGE_BYTES", "1_048_576")
    monkeypatch.setenv("WHARF_DATA_DIR", "/var/lib/wharf")
    monkeypatch.setenv("WHARF_DEFAULT_USER_ENABLED", "false")
    monkeypatch.setenv("WHARF_LOOPBACK_USERS", "guest, ops")
    monkeypatch.setenv("WHARF_SHUTDOWN_TIMEOUT_S", "2.5")
    monkeypatch.setenv("WHARF_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("WHARF_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("WHARF_SOMETHING_ELSE", "ignored")
    s = load_settings(None, {})
    assert s.max_message_bytes == MIB
    assert s.data_dir == "/var/lib/wharf"
    assert s.default_user_enabled is False
    assert s.loopback_users == ["guest", "ops"]
    assert s.shutdown_timeout_s == 2.5
    assert s.http_bind_host == "127.0.0.1"
    assert s.log_level == "debug"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WHARF_PORT", "http"),
        ("WHARF_PORT", "70000"),
        ("WHARF_DEFAULT_USER_ENABLED", "maybe"),
        ("WHARF_MAX_CONNECTIONS", "0"),
        ("WHARF_USERS", "x"),
    ],
)
def test_bad_env_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(None, {})


def test_toml_users_and_guest_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
loopback_users = []
[[users]]
name = "guest"
password_hash = "{HASH}"
[[users]]
name = "app"
password_hash = "{HASH}"
tags = ["monitoring"]
""",
    )
    s = load_settings(path, {})
    assert s.users == [
        UserConfig("guest", HASH, []),
        UserConfig("app", HASH, ["monitoring"]),
    ]
    assert s.loopback_users == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 5", "unknown key 'prot'"),
        ("port = 'x'", "port"),
        ("port = 99999", "port"),
        ("port = true", "port"),
        ("max_frame_bytes = 10", "max_frame_bytes"),
        ("log_level = 'loud'", "log_level"),
        ("heartbeat_s = -1", "heartbeat_s"),
        ("handshake_timeout_s = 0", "handshake_timeout_s"),
        ("default_user_enabled = 1", "default_user_enabled"),
        ("loopback_users = 'guest'", "loopback_users"),
        ("max_message_bytes = 140000000", "max_message_bytes"),
        ("[[users]]\nname = 'a'\npassword_hash = 'plain'", "users[0].password_hash"),
        ("[[users]]\nname = 'a'", "missing key 'password_hash'"),
        (f"[[users]]\nname = 'a'\npassword_hash = '{HASH}'\nrole = 'x'", "unknown key 'role'"),
        (
            f"[[users]]\nname = 'a'\npassword_hash = '{HASH}'\n"
            f"[[users]]\nname = 'a'\npassword_hash = '{HASH}'",
            "defined twice",
        ),
        ("port = ", "not valid TOML"),
    ],
)
def test_bad_toml_raises_config_error_naming_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # Found by the config fuzz target: tomllib let the UnicodeDecodeError through.
    path = tmp_path / "latin1.toml"
    path.write_bytes("data_dir = '/srv/donn\u00e9es'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 \(byte 21\)"):
        load_settings(str(path), {})


def test_an_integer_beyond_the_float_range_is_a_config_error(tmp_path: Path) -> None:
    # Found by the config fuzz target: float() raised OverflowError.
    with pytest.raises(ConfigError, match="handshake_timeout_s: expected a finite number > 0.0"):
        load_settings(write(tmp_path, "handshake_timeout_s = 1" + "0" * 400), {})


def test_an_infinite_number_is_a_config_error(tmp_path: Path) -> None:
    # inf would silently turn the limit off; TOML spells it inf, the environment 1e999.
    with pytest.raises(ConfigError, match="shutdown_timeout_s: expected a finite number"):
        load_settings(write(tmp_path, "shutdown_timeout_s = inf"), {})
    with pytest.raises(ConfigError, match="WHARF_MEMORY_HIGH_WATERMARK: expected a finite number"):
        load_settings(None, {}, environ={"WHARF_MEMORY_HIGH_WATERMARK": "1e999"})


def test_an_integer_of_too_many_digits_is_a_config_error(tmp_path: Path) -> None:
    # Beyond Python's 4300-digit limit tomllib raises a bare ValueError.
    with pytest.raises(ConfigError, match="is not valid TOML: Exceeds the limit"):
        load_settings(write(tmp_path, "port = 1" + "0" * 5000), {})


def test_suggest_key_offers_the_closest_known_key() -> None:
    keys = [f.name for f in dataclasses.fields(Settings)]
    assert suggest_key("prot", keys) == "port"
    assert suggest_key("datadir", keys) == "data_dir"
    assert suggest_key("SHUTDOWN_TIMEOUT", keys) == "shutdown_timeout_s"
    assert suggest_key("colour", keys) is None
    assert unknown_key_message("f.toml", "prot", keys) == (
        "f.toml: unknown key 'prot' (did you mean 'port'?)"
    )
    assert unknown_key_message("f.toml", "colour", keys) == "f.toml: unknown key 'colour'"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 5", "unknown key 'prot' (did you mean 'port'?)"),
        ("http_prot = 5", "(did you mean 'http_port'?)"),
        (f"[[users]]\nname = 'a'\npassword_hash = '{HASH}'\ntag = ['x']", "(did you mean 'tags'?)"),
    ],
)
def test_unknown_toml_key_says_did_you_mean(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    assert fragment in str(info.value)


def test_misspelt_env_var_is_an_error_with_the_right_name() -> None:
    env = {"WHARF_PROT": "5681", "WHARF_DATADIR": "/d", "WHARF_PORT": "1"}
    with pytest.raises(ConfigError) as info:
        load_settings(None, {}, environ=env)
    message = str(info.value)
    assert "WHARF_PROT: no such setting (did you mean WHARF_PORT?)" in message
    assert "WHARF_DATADIR: no such setting (did you mean WHARF_DATA_DIR?)" in message


def test_other_wharf_env_vars_are_not_taken_for_typos() -> None:
    # Read by ctl, bench, the test harness: close to settings (WHARF_USER ~ WHARF_USERS)
    # but not settings, so never an error.
    env = {
        "WHARF_USER": "ann",
        "WHARF_PASSWORD": "pw",
        "WHARF_URL": "wharf://localhost",
        "WHARF_HTTP_URL": "http://localhost:8680",
        "WHARF_CONFIG": "/etc/wharf.toml",
        "WHARF_TEST_SYNC_LOG": "/tmp/sync.log",
        "WHARF_CRASH_SEED": "1",
        "WHARF_SOMETHING_ELSE": "x",
        "WHARF_PORT": "5681",
    }
    assert misspelt_env_vars(env) == []
    assert load_settings(None, {}, environ=env).port == 5681


def test_cli_unknown_option_says_did_you_mean() -> None:
    result = CliRunner().invoke(main, ["serve", "--data_dir", "x"])
    assert result.exit_code == 2
    assert "Did you mean '--data-dir'?" in result.output


def test_missing_file_and_unknown_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(str(tmp_path / "nope.toml"), {})
    with pytest.raises(ConfigError, match="'colour'"):
        load_settings(None, {"colour": "blue"})
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, {"port": -1})


def test_describe_is_json_ready_and_hides_hashes() -> None:
    s = Settings(users=[UserConfig("app", HASH, ["administrator"])], http_port=9000)
    d = describe(s)
    text = json.dumps(d)
    assert HASH not in text and "password_hash" not in text
    assert d["users"] == [{"name": "app", "tags": ["administrator"]}]
    assert d["http_host"] == "0.0.0.0" and d["http_port"] == 9000


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_json_lines() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)  # idempotent: still one handler
    log = logging.getLogger("wharf.test")
    log.debug("hidden")
    log.info("hello %s", "world", extra={"conn": "conn-7"})
    log.warning("plain")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["msg"] == "hello world" and first["conn"] == "conn-7"
    assert first["level"] == "info" and first["logger"] == "wharf.test"
    assert first["ts"].endswith("Z")
    assert "conn" not in second and second["level"] == "warning"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_human_and_bad_args() -> None:
    out = io.StringIO()
    configure_logging("warning", stream=out)
    logging.getLogger("wharf.test").warning("careful", extra={"conn": "c1"})
    assert "WARNING" in out.getvalue() and "[c1]: careful" in out.getvalue()
    with pytest.raises(ConfigError):
        configure_logging("loud")
    with pytest.raises(ConfigError):
        configure_logging("info", "xml")


# --- CLI ----------------------------------------------------------------------------------


def test_cli_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"wharf {version('wharf')}"


def test_cli_config_check_human_and_json(tmp_path: Path) -> None:
    path = write(tmp_path, f'port = 7000\n[[users]]\nname = "app"\npassword_hash = "{HASH}"\n')
    result = CliRunner().invoke(main, ["config", "check", path])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "port = 7000" in result.output
    assert HASH not in result.output
    result = CliRunner().invoke(main, ["config", "check", "--json", path])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["port"] == 7000 and data["users"] == [{"name": "app", "tags": []}]


def test_cli_config_check_reports_bad_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "check", write(tmp_path, "prot = 1\n")])
    assert result.exit_code == 1
    assert "unknown key 'prot'" in result.output


def test_cli_serve_passes_flags_over_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Settings] = []

    def fake_run(settings: Settings) -> int:
        seen.append(settings)
        return 3

    fake = types.ModuleType("wharf.broker.server")
    fake.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wharf.broker.server", fake)
    import wharf.broker

    monkeypatch.setattr(wharf.broker, "server", fake, raising=False)
    path = write(tmp_path, 'port = 1\nhttp_port = 2\ndata_dir = "/from-file"\n')
    monkeypatch.setenv("WHARF_HTTP_PORT", "3")
    result = CliRunner().invoke(
        main, ["serve", "--config", path, "--port", "4", "--log-level", "debug"]
    )
    assert result.exit_code == 3, result.output
    (s,) = seen
    assert (s.port, s.http_port, s.data_dir, s.log_level) == (4, 3, "/from-file", "debug")


def test_cli_serve_bad_config_exits_with_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--config", write(tmp_path, "port = 'x'\n")])
    assert result.exit_code == 1
    assert "port" in result.output


def test_audit_log_settings_from_toml_env_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().audit_log_file is None  # <data_dir>/audit.log
    s = load_settings(None, {}, environ={"WHARF_DATA_DIR": "/d"})
    assert describe(s)["audit_log_file"] == "/d/audit.log"
    path = write(tmp_path, 'audit_log_file = "/a.log"\naudit_log_max_bytes = 8192\n')
    env = {"WHARF_AUDIT_LOG_BACKUPS": "2", "WHARF_AUDIT_LOG_MAX_BYTES": "16384"}
    s = load_settings(path, {}, environ=env)
    assert (s.audit_log_file, s.audit_log_max_bytes, s.audit_log_backups) == ("/a.log", 16384, 2)
    s = load_settings(path, {"audit_log_file": ""}, environ={"WHARF_AUDIT_LOG_FILE": "/b.log"})
    assert s.audit_log_file == "" and describe(s)["audit_log_file"] == ""  # off
    assert load_settings(None, {}, environ={"WHARF_AUDIT_LOG_FILE": ""}).audit_log_file == ""
    with pytest.raises(ConfigError, match="audit_log_max_bytes"):
        load_settings(write(tmp_path, "audit_log_max_bytes = 10\n"), {}, environ={})
    with pytest.raises(ConfigError, match="audit_log_file"):
        load_settings(write(tmp_path, "audit_log_file = 3\n"), {}, environ={})

    seen: list[Settings] = []
    fake = types.ModuleType("wharf.broker.server")
    fake.run = lambda settings: seen.append(settings) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wharf.broker.server", fake)
    import wharf.broker

    monkeypatch.setattr(wharf.broker, "server", fake, raising=False)
    result = CliRunner().invoke(main, ["serve", "--audit-log-file", "/c.log"])
    assert result.exit_code == 0, result.output
    assert seen[0].audit_log_file == "/c.log"
