"""Connection URLs: ``wharf://user:password@host:port/vhost`` and, with TLS,
``wharfs://user:password@host:port/vhost?cafile=...&certfile=...&keyfile=...``.  Either
may force an auth mechanism: ``?auth_mechanism=PLAIN`` (or SCRAM-SHA-256, EXTERNAL).

The path names the virtual host as in RabbitMQ's URI spec: none or ``/`` is the default
vhost ``/``, ``/orders`` is ``orders``, and a ``/`` inside a name is ``%2F``
(``/%2Fx`` is ``/x``).
"""

from __future__ import annotations

from typing import Final, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from wharf.protocol.errors import InvalidArgument

SCHEME: Final = "wharf"
TLS_SCHEME: Final = "wharfs"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5680
DEFAULT_TLS_PORT: Final = 5681
# Query options of a wharfs:// URL: PEM files for the client's SSLContext (client/tls.py).
TLS_QUERY_OPTIONS: Final = ("cafile", "certfile", "keyfile")
# Query option of both schemes (client/scram.py); its values, case-insensitive.
AUTH_MECHANISM_OPTION: Final = "auth_mechanism"
AUTH_MECHANISMS: Final = ("SCRAM-SHA-256", "PLAIN", "EXTERNAL")
DEFAULT_USERNAME: Final = "guest"
DEFAULT_PASSWORD: Final = "guest"
DEFAULT_VHOST: Final = "/"
DEFAULT_URL: Final = (
    f"{SCHEME}://{DEFAULT_USERNAME}:{DEFAULT_PASSWORD}@{DEFAULT_HOST}:{DEFAULT_PORT}"
)


class ConnectParams(NamedTuple):
    host: str
    port: int
    username: str
    password: str
    tls: bool = False  # wharfs://
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    vhost: str = DEFAULT_VHOST  # the URL's path
    auth_mechanism: str | None = None  # None: the best the broker offers


def parse_url(url: str) -> ConnectParams:
    """Split a ``wharf://`` or ``wharfs://`` URL into its parts; user, password and
    query values are percent-decoded.

    Missing parts take the defaults (127.0.0.1, 5680 or for wharfs:// 5681, guest/guest,
    vhost "/").  Raises ``InvalidArgument`` for another scheme, a bad port, a path of more
    than one segment (write a ``/`` in a vhost name as ``%2F``), a fragment, or a query
    other than ``auth_mechanism`` and a wharfs:// URL's ``cafile``, ``certfile`` and
    ``keyfile``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"bad Wharf URL {_redact(url)!r}: {exc}") from None
    if parts.scheme not in (SCHEME, TLS_SCHEME):
        raise InvalidArgument(
            f"bad Wharf URL {_redact(url)!r}: scheme must be '{SCHEME}://' or "
            f"'{TLS_SCHEME}://' (TLS), e.g. {SCHEME}://guest:guest@127.0.0.1:{DEFAULT_PORT}"
        )
    tls = parts.scheme == TLS_SCHEME
    vhost = vhost_of_path(parts.path)
    if vhost is None or parts.fragment:
        raise InvalidArgument(
            f"bad Wharf URL {_redact(url)!r}: expected {SCHEME}://user:password@host:port"
            f"[/vhost] with one path segment at most (a '/' in a vhost name is %2F), no "
            f"fragment (a {TLS_SCHEME}:// URL may have "
            f"?{'=&'.join(TLS_QUERY_OPTIONS)}=, either ?{AUTH_MECHANISM_OPTION}=)"
        )
    known = (*TLS_QUERY_OPTIONS, AUTH_MECHANISM_OPTION) if tls else (AUTH_MECHANISM_OPTION,)
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known or key in options or not value:
            raise InvalidArgument(
                f"bad Wharf URL {_redact(url)!r}: query option {key!r} is unknown, repeated "
                f"or empty (known for {parts.scheme}://: {', '.join(known)})"
            )
        options[key] = value
    mechanism = options.get(AUTH_MECHANISM_OPTION)
    if mechanism is not None:
        mechanism = check_auth_mechanism(mechanism)
    if "keyfile" in options and "certfile" not in options:
        raise InvalidArgument(f"bad Wharf URL {_redact(url)!r}: keyfile needs certfile")
    username = DEFAULT_USERNAME if parts.username is None else unquote(parts.username)
    if parts.password is not None:
        password = unquote(parts.password)
    elif parts.username is None:
        password = DEFAULT_PASSWORD
    else:
        password = ""
    default_port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    return ConnectParams(
        host=parts.hostname or DEFAULT_HOST,
        port=default_port if port is None else port,
        username=username,
        password=password,
        tls=tls,
        cafile=options.get("cafile"),
        certfile=options.get("certfile"),
        keyfile=options.get("keyfile"),
        vhost=vhost,
        auth_mechanism=mechanism,
    )


def vhost_of_path(path: str) -> str | None:
    """The vhost a URL path names (RabbitMQ's URI spec); None if it names none
    validly (more than one segment, or bad percent-encoding)."""
    if path in ("", "/"):
        return DEFAULT_VHOST
    segment = path[1:]
    if "/" in segment:
        return None
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None


def check_auth_mechanism(mechanism: str) -> str:
    """The mechanism's canonical name; InvalidArgument if the SDK does not speak it."""
    name = mechanism.upper()
    if name not in AUTH_MECHANISMS:
        raise InvalidArgument(
            f"auth_mechanism {mechanism!r} is unknown: use one of {', '.join(AUTH_MECHANISMS)}"
        )
    return name


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
