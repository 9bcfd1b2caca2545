"""Cross-site protections of the admin plane: which Host, Origin and Content-Type a request
may carry, and the headers every answer carries.  Pure functions; server.py applies them to
each request before it is routed (docs/security.md, "HTTP API protections").

Why each check (the threats are a browser's, never curl's or the SDK's):

* **Host** (DNS rebinding): a page on ``evil.example`` re-resolves its own name to
  127.0.0.1; the browser then treats ``http://evil.example:8680`` as the page's own origin
  and lets it send any request, credentials included (guest/guest works from loopback).
  The Host header still says ``evil.example``.  Allowed: any IP address literal (a browser
  showing an IP address's page is not rebinding a name), ``localhost`` and ``*.localhost``
  (RFC 6761), the machine's host name, the bind address, and ``http_allowed_hosts``
  (``.example.com`` allows the domain and its subdomains, ``*`` allows every name).
  Only /api is checked: the monitoring endpoints (/metrics, /healthz, /readyz: GET only,
  no credentials) stay reachable by any name, for scrapers and probes.
* **Origin** (cross-site writes): a write (POST, PUT, DELETE, PATCH) whose Origin is not
  the broker's own (its ``host[:port]`` equals the Host header) nor in
  ``http_allowed_origins`` is refused.  Without an Origin header (curl, the SDK, wharf
  ctl) it is allowed: browsers send Origin on every cross-site write.
* **Content-Type** (form posts): a write with a body must say it is JSON
  (``application/json`` or ``application/<x>+json``).  HTML forms can only send
  ``text/plain``, ``multipart/form-data`` and urlencoded bodies without a CORS preflight,
  and the API answers no preflight.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

WRITE_METHODS: Final = frozenset({"POST", "PUT", "DELETE", "PATCH"})
ANY: Final = "*"
LOOPBACK_NAME: Final = "localhost"
_WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::"})

# On every answer: no MIME sniffing of JSON into HTML, no framing (clickjacking), and
# nothing the answer could load (it is JSON or text; the web UI will loosen this for its
# own pages), and no reads of it by other sites' <script>/<img> tags.
SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class CrossSitePolicy:
    """The names and origins a broker answers to (build it with :meth:`build`)."""

    names: frozenset[str]  # exact host names, lower case, no port
    suffixes: tuple[str, ...]  # ".example.com": the domain and its subdomains
    any_host: bool
    origins: frozenset[str]  # "scheme://host[:port]", lower case
    any_origin: bool

    @classmethod
    def build(
        cls,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        bind_hosts: Iterable[str] = (),
        hostname: str = "",
    ) -> CrossSitePolicy:
        names = {LOOPBACK_NAME}
        suffixes: list[str] = []
        any_host = False
        for raw in (*allowed_hosts, *bind_hosts, hostname, hostname.partition(".")[0]):
            name = raw.strip().lower().rstrip(".")
            if name == ANY:
                any_host = True
            elif name.startswith("."):
                suffixes.append(name)
            elif name not in _WILDCARD_BINDS:
                names.add(name.strip("[]"))
        origins = {o.strip().lower().rstrip("/") for o in allowed_origins}
        return cls(
            names=frozenset(names),
            suffixes=tuple(suffixes),
            any_host=any_host,
            origins=frozenset(origins - {ANY}),
            any_origin=ANY in origins,
        )

    def host_allowed(self, name: str) -> bool:
        """Whether ``name`` (lower case, no port) is one of the broker's names."""
        if self.any_host or name in self.names or name.endswith("." + LOOPBACK_NAME):
            return True
        if _is_ip_literal(name):
            return True
        return any(name == s[1:] or name.endswith(s) for s in self.suffixes)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(host_header: str) -> str | None:
    """The name part of a Host header (``name``, ``name:port``, ``[v6]:port``), lower
    case and without a trailing dot; None when it is malformed."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return name if _is_ip_literal(name) else None
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    name = name.rstrip(".")
    if not name or any(c in name for c in " /\\@?#"):
        return None
    return name


def host_refusal(policy: CrossSitePolicy, host_header: str | None) -> str | None:
    """Why a request's Host is refused, or None.  No Host header (HTTP/1.0 tools) passes:
    browsers always send one."""
    if host_header is None:
        return None
    name = host_name(host_header)
    if name is None:
        return f"malformed Host header {host_header!r}"
    if policy.host_allowed(name):
        return None
    return (
        f"Host {name!r} is not one of this broker's names: to reach the broker by this "
        f"name, add it to http_allowed_hosts (this check stops DNS rebinding)"
    )


def origin_refusal(
    policy: CrossSitePolicy, method: str, origin: str | None, host_header: str | None
) -> str | None:
    """Why a write's Origin is refused, or None (reads, and requests without Origin)."""
    if origin is None or method not in WRITE_METHODS or policy.any_origin:
        return None
    normalised = origin.strip().lower().rstrip("/")
    if normalised in policy.origins:
        return None
    parts = urllib.parse.urlsplit(normalised)
    if (
        host_header is not None
        and parts.scheme in ("http", "https")
        and parts.netloc == host_header.strip().lower()
        and not (parts.path or parts.query or parts.fragment)
    ):
        return None  # the broker's own origin (also behind a TLS-terminating proxy)
    return (
        f"cross-site {method} from origin {origin!r} refused: only the broker's own "
        f"origin and http_allowed_origins may write"
    )


def is_json_media_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    kind, slash, subtype = media.partition("/")
    json_subtype = subtype == "json" or subtype.endswith("+json")
    return kind == "application" and bool(slash) and json_subtype


def content_type_refusal(method: str, has_body: bool, content_type: str | None) -> str | None:
    """Why a write's body is refused for its Content-Type (415), or None."""
    if method not in WRITE_METHODS or not has_body or is_json_media_type(content_type):
        return None
    given = "none" if content_type is None else repr(content_type)
    return f"a request body must be JSON: send Content-Type: application/json (got {given})"
