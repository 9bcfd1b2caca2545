"""The HTTP client and the output formatting of ``wharf ctl`` (ctl.py, ctl_logs.py).

Only the standard library talks HTTP here (urllib), so the command works wherever the
broker package is installed.  Output is an aligned table (or ``key: value`` lines) for
people and, with ``--json``, the API's JSON answer for scripts.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, Final

import click

from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder

DEFAULT_URL: Final = "http://127.0.0.1:8680"
DEFAULT_HTTP_PORT: Final = 8680
REQUEST_TIMEOUT_S: Final = 30.0
DEFAULT_EXCHANGE_ALIAS: Final = "amq.default"


class BrokerError(click.ClickException):
    """The broker answered with an error, or could not be reached: exit code 1."""

    exit_code = 1


def https_context(
    cafile: str | None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext | None:
    """The context for an https:// broker URL: ``cafile`` (else the system CAs) to check
    the broker's certificate, and a client certificate when the broker asks for one."""
    if cafile is None and certfile is None:
        return None  # urllib's default: the system CAs, hostname checked
    try:
        ctx = ssl.create_default_context(cafile=cafile)
        if certfile is not None:
            ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot load the TLS files: {exc}") from None
    return ctx


class ApiClient:
    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        as_json: bool,
        ssl_context: ssl.SSLContext | None = None,
        vhost: str = "/",
    ) -> None:
        self.base = url.rstrip("/")
        # The vhost commands work in (--vhost/-p, as rabbitmqctl's -p).
        self.vhost = vhost
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self.auth = f"Basic {token}"
        self.as_json = as_json
        self.ssl_context = ssl_context

    @property
    def v(self) -> str:
        """The vhost as a path segment (``%2F`` for the default vhost)."""
        return seg(self.vhost)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = self.base + "/api" + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", self.auth)
        req.add_header("Accept", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(
                req, timeout=REQUEST_TIMEOUT_S, context=self.ssl_context
            ) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise BrokerError(_error_message(exc)) from None
        except http.client.HTTPException as exc:
            # Not an HTTP answer at all (http.client.BadStatusLine and kin).
            raise BrokerError(self._not_http_message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            hint = ""
            if isinstance(reason, ssl.SSLCertVerificationError):
                hint = " (give the CA that signed the broker's certificate with --cafile)"
            elif isinstance(reason, ssl.SSLError):
                hint = " (https:// is for the broker's https_port, 8681 by default)"
            raise BrokerError(f"cannot reach the broker at {self.base}: {reason}{hint}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise BrokerError(f"the broker at {self.base} did not answer with JSON") from None

    def _not_http_message(self, exc: http.client.HTTPException) -> str:
        line = getattr(exc, "line", "")
        # http.client decodes the status line as latin-1: this gives the bytes back.
        raw = line.encode("latin-1", "replace") if isinstance(line, str) else b""
        if _is_wharf_protocol(raw):
            return (
                f"{self.base} speaks the Wharf protocol, not HTTP: this port speaks the "
                f"Wharf protocol; the HTTP port is {DEFAULT_HTTP_PORT} (unless the broker "
                "was configured otherwise)"
            )
        return f"the server at {self.base} did not answer with HTTP ({type(exc).__name__})"

    def show(self, result: Any, human: str | None = None) -> None:
        """Print ``result`` as JSON with --json, else the human text (if any)."""
        if self.as_json:
            click.echo(json.dumps(result, indent=2, sort_keys=True))
        elif human is not None:
            click.echo(human)


def _is_wharf_protocol(raw: bytes) -> bool:
    """True if ``raw`` starts with the frame a Wharf broker sends as soon as it accepts a
    connection (HELLO), or with its fatal ERROR."""
    try:
        raws = FrameDecoder(use_list=True).feed(raw)
        first = F.parse(raws[0]) if raws else None
    except Exception:  # any decoding failure just means "not Wharf"
        return False
    return isinstance(first, (F.Hello, F.Error))


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read())
        message, code = doc["error"], doc.get("code")
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code} {exc.reason}"
    return f"{message} (HTTP {exc.code}" + (f", code {code})" if code is not None else ")")


def seg(name: str) -> str:
    """A name as one URL path segment ('/' and everything else percent-encoded)."""
    return urllib.parse.quote(name, safe="")


def exchange_seg(name: str) -> str:
    return seg(name or DEFAULT_EXCHANGE_ALIAS)


def parse_args(pairs: Sequence[str], what: str = "--arg") -> dict[str, Any]:
    """``k=v`` pairs; v is JSON when it parses (10, true, "x", [..]) and a string else."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{what} takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns: numbers to the right, everything else to the left."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    # A column of numbers (and "-" for none) is right-aligned.
    numeric = [
        any(_is_number(r[i]) for r in rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def fmt(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(headers), *(fmt(r) for r in cells)])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True) if v else "-"
    return str(v)


def key_values(doc: dict[str, Any]) -> str:
    width = max((len(k) for k in doc), default=0)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in doc.items())


pass_client = click.make_pass_decorator(ApiClient)
