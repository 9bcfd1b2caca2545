"""TLS settings, their errors, the certificate expiry reader, and wharfs:// URLs."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import trustme

from wharf.broker.config import ConfigError, load_settings
from wharf.broker.security.tls import cert_not_after
from wharf.url import parse_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WHARF_"):
            monkeypatch.delenv(name)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    other = ca.issue_cert("other")
    paths = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "other_key": tmp_path / "other.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    return {k: str(v) for k, v in paths.items()}


def tls(files: dict[str, str], **extra: object) -> dict[str, object]:
    return {"tls_cert_file": files["cert"], "tls_key_file": files["key"], **extra}


def test_tls_settings_load_from_flags_env_and_toml(
    files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(None, tls(files))
    assert s.tls_enabled and s.plain_enabled
    assert (s.tls_port, s.https_port, s.tls_min_version, s.tls_client_auth) == (
        5681,
        8681,
        "1.2",
        "none",
    )
    monkeypatch.setenv("WHARF_TLS_CERT_FILE", files["cert"])
    monkeypatch.setenv("WHARF_TLS_KEY_FILE", files["key"])
    monkeypatch.setenv("WHARF_TLS_MIN_VERSION", "1.3")
    monkeypatch.setenv("WHARF_PLAIN_PORT", "0")
    s = load_settings(None, {})
    assert s.tls_enabled and not s.plain_enabled and s.tls_min_version == "1.3"
    toml = tmp_path / "w.toml"
    toml.write_text(f'tls_ca_file = "{files["ca"]}"\ntls_client_auth = "required"\n')
    s = load_settings(str(toml), {})
    assert s.tls_client_auth == "required" and s.tls_ca_file == files["ca"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"tls_cert_file": "/nonexistent/cert.pem"}, "tls_cert_file: no such file"),
        ({"tls_key_file": "/nonexistent/key.pem"}, "tls_key_file: no such file"),
        ({"tls_min_version": "1.1"}, "tls_min_version"),
        ({"tls_min_version": "banana"}, "tls_min_version"),
        ({"tls_client_auth": "required"}, "needs tls_ca_file"),
        ({"tls_client_auth": "maybe"}, "tls_client_auth"),
        ({"tls_ciphers": "NO-SUCH-CIPHER"}, "tls_ciphers"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file: no such file"),
    ],
)
def test_bad_tls_settings_are_clear_errors(
    files: dict[str, str], extra: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, tls(files, **extra))


def test_key_not_matching_the_certificate(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="is not the key of the certificate"):
        load_settings(None, tls(files, tls_key_file=files["other_key"]))


def test_a_certificate_file_that_is_a_key(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_settings(None, tls(files, tls_cert_file=files["key"]))


def test_listener_rules(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="tls_key_file is not"):
        load_settings(None, {"tls_cert_file": files["cert"]})
    with pytest.raises(ConfigError, match="no native listener"):
        load_settings(None, {"plain_port": 0})
    with pytest.raises(ConfigError, match="need TLS"):
        load_settings(None, {"tls_ca_file": files["ca"]})
    with pytest.raises(ConfigError, match="port and tls_port are both 5680"):
        load_settings(None, tls(files, tls_port=5680))
    # plain_port is port's other name.
    assert load_settings(None, {"plain_port": 6000}).port == 6000


def test_handshake_timeout_ms_and_its_older_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(None, {}).handshake_timeout_ms == 10_000
    toml = tmp_path / "w.toml"
    toml.write_text("handshake_timeout_s = 2.5\n")
    s = load_settings(str(toml), {})
    assert s.handshake_timeout_ms == 2_500 and s.handshake_timeout_s == 2.5
    toml.write_text("handshake_timeout_s = 2.5\nhandshake_timeout_ms = 700\n")
    assert load_settings(str(toml), {}).handshake_timeout_ms == 700  # the new name wins
    monkeypatch.setenv("WHARF_HANDSHAKE_TIMEOUT_S", "3")  # not reported as a typo
    assert load_settings(None, {}).handshake_timeout_ms == 3_000


def test_cert_not_after_reads_the_validity(tmp_path: Path) -> None:
    ca = trustme.CA()
    for when in (
        datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),  # UTCTime
        datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),  # GeneralizedTime
    ):
        leaf = ca.issue_cert("x", not_after=when)
        pem = leaf.cert_chain_pems[0].bytes().decode()
        assert cert_not_after(pem) == when.timestamp()
    with pytest.raises(ValueError, match="no PEM certificate"):
        cert_not_after("nothing here")


def test_wharfs_urls() -> None:
    p = parse_url("wharfs://app:pw@broker.example")
    assert (p.tls, p.host, p.port, p.cafile) == (True, "broker.example", 5681, None)
    p = parse_url("wharfs://h:7000?cafile=/ca.pem&certfile=/c.pem&keyfile=/k%20.pem")
    assert (p.port, p.cafile, p.certfile, p.keyfile) == (7000, "/ca.pem", "/c.pem", "/k .pem")
    assert parse_url("wharf://h").tls is False and parse_url("wharf://h").port == 5680
    for bad in (
        "wharf://h?cafile=/ca.pem",  # TLS options on a plain URL
        "wharfs://h?verify=no",
        "wharfs://h?cafile=",
        "wharfs://h?keyfile=/k.pem",
        "https://h",
    ):
        with pytest.raises(Exception, match="bad Wharf URL"):
            parse_url(bad)
