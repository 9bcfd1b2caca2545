"""Connection URLs: ``wharf://user:password@host:port``."""

from __future__ import annotations

from typing import Final, NamedTuple
from urllib.parse import unquote, urlsplit

from wharf.protocol.errors import InvalidArgument

SCHEME: Final = "wharf"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5680
DEFAULT_USERNAME: Final = "guest"
DEFAULT_PASSWORD: Final = "guest"
DEFAULT_URL: Final = (
    f"{SCHEME}://{DEFAULT_USERNAME}:{DEFAULT_PASSWORD}@{DEFAULT_HOST}:{DEFAULT_PORT}"
)


class ConnectParams(NamedTuple):
    host: str
    port: int
    username: str
    password: str


def parse_url(url: str) -> ConnectParams:
    """Split a ``wharf://`` URL into its parts; user and password are percent-decoded.

    Missing parts take the defaults (127.0.0.1, 5680, guest/guest).  Raises
    ``InvalidArgument`` for another scheme, a bad port, or a path/query, which Wharf
    URLs do not have.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"bad Wharf URL {_redact(url)!r}: {exc}") from None
    if parts.scheme != SCHEME:
        raise InvalidArgument(
            f"bad Wharf URL {_redact(url)!r}: scheme must be '{SCHEME}://', "
            f"e.g. {SCHEME}://guest:guest@127.0.0.1:{DEFAULT_PORT}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgument(
            f"bad Wharf URL {_redact(url)!r}: expected {SCHEME}://user:password@host:port "
            "with no path, query or fragment"
        )
    username = DEFAULT_USERNAME if parts.username is None else unquote(parts.username)
    if parts.password is not None:
        password = unquote(parts.password)
    elif parts.username is None:
        password = DEFAULT_PASSWORD
    else:
        password = ""
    return ConnectParams(
        host=parts.hostname or DEFAULT_HOST,
        port=DEFAULT_PORT if port is None else port,
        username=username,
        password=password,
    )


def _redact(url: str) -> str:
    """The URL with its password replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
