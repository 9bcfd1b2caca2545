"""The admin plane's cross-site rules as functions (broker/http/guards.py); the same rules
over real sockets are in integration/test_http_protections.py."""

from __future__ import annotations

import pytest

from wharf.broker.http.guards import (
    CrossSitePolicy,
    content_type_refusal,
    host_name,
    host_refusal,
    is_json_media_type,
    origin_refusal,
)

POLICY = CrossSitePolicy.build(
    allowed_hosts=["wharf", ".example.com"],
    allowed_origins=["https://console.example.com/"],
    bind_hosts=["0.0.0.0", "broker.lan"],
    hostname="node-7.dc1.internal",
)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM.", "example.com"),
        ("example.com:8680", "example.com"),
        ("[::1]:8680", "::1"),
        ("[::1]", "::1"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("[nope]:80", None),
        ("[::1]x", None),
        ("a.b:port", None),
        ("user@evil.example", None),
        ("", None),
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "a.localhost:1",
        "127.0.0.1",
        "203.0.113.9:8680",
        "[2001:db8::1]:8680",
        "wharf:8680",
        "example.com",
        "deep.api.example.com",
        "broker.lan",
        "node-7",
        "node-7.dc1.internal",
    ],
)
def test_the_brokers_names_pass(host: str) -> None:
    assert host_refusal(POLICY, host) is None
    assert host_refusal(POLICY, None) is None  # no Host: not a browser


@pytest.mark.parametrize(
    "host", ["evil.example", "wharf.evil", "notexample.com", "example.com.evil", "0.0.0.0x"]
)
def test_other_names_are_refused(host: str) -> None:
    refusal = host_refusal(POLICY, host)
    assert refusal is not None and "http_allowed_hosts" in refusal


def test_star_allows_every_host_and_origin() -> None:
    anything = CrossSitePolicy.build(allowed_hosts=["*"], allowed_origins=["*"])
    assert host_refusal(anything, "evil.example") is None
    assert origin_refusal(anything, "PUT", "https://evil.example", "localhost") is None


@pytest.mark.parametrize(
    ("method", "origin", "host", "refused"),
    [
        ("PUT", None, "localhost:8680", False),
        ("GET", "https://evil.example", "localhost:8680", False),  # reads: CORS hides them
        ("PUT", "http://localhost:8680", "localhost:8680", False),
        ("PUT", "https://broker.example.com", "broker.example.com", False),  # TLS proxy
        ("DELETE", "https://console.example.com", "localhost", False),
        ("PUT", "http://localhost:8681", "localhost:8680", True),
        ("POST", "https://evil.example", "localhost:8680", True),
        ("PATCH", "null", "localhost:8680", True),
        ("PUT", "http://localhost:8680/path", "localhost:8680", True),
        ("PUT", "file://localhost:8680", "localhost:8680", True),
    ],
)
def test_origin(method: str, origin: str | None, host: str, refused: bool) -> None:
    assert (origin_refusal(POLICY, method, origin, host) is not None) is refused


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.wharf+json", True),
        ("text/plain", False),
        ("text/json", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, json: bool) -> None:
    assert is_json_media_type(content_type) is json
    refused = content_type_refusal("POST", True, content_type) is not None
    assert refused is not json
    assert content_type_refusal("POST", False, content_type) is None  # no body, nothing parsed
    assert content_type_refusal("GET", True, content_type) is None
