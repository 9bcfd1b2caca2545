"""Who is calling the management API: HTTP basic credentials, or a web UI session.

One place for every route (``ManagementApi._dispatch`` calls :meth:`ApiAuth.authenticate`
before routing):

* ``Authorization: Basic ...`` (scripts, ``wharf ctl``): checked by the authenticator on
  every request, as before; no CSRF token (a browser cannot forge that header for another
  site).
* the ``wharf_session`` cookie (the web UI): a session made by ``POST /api/auth/login``
  (sessions.py).  Reads need nothing more; any other method needs the session's CSRF token
  in ``X-CSRF-Token`` (403, code 403, otherwise): the cookie goes with any request the
  browser makes to the broker, the token only with the UI's own.

A 401 carries ``WWW-Authenticate: Basic`` (curl and browsers prompt for credentials),
except for requests that say they come from a script (``X-Requested-With``) or carry a
session cookie: the UI shows its own login form instead of the browser's dialog.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from wharf.protocol.errors import AccessRefused, InvalidArgument, WharfError

from ..security.audit import AuditEvent
from ..security.identity import MECHANISM_HTTP_BASIC, MECHANISM_HTTP_LOGIN
from ..security.users import MAX_PASSWORD_CHARS, MAX_USER_NAME_CHARS
from .api_core import ApiError, Call, Fields, Result, parse_body
from .guards import is_json_media_type
from .sessions import (
    CSRF_HEADER,
    DEFAULT_IDLE_TIMEOUT_S,
    Session,
    SessionStore,
    session_cookie_value,
    set_cookie_header,
)

if TYPE_CHECKING:
    from ..security.users import StoredUser
    from .api_broker import ApiBroker

AUTH_REALM: Final = 'Basic realm="wharf", charset="UTF-8"'
LOGIN_PATH: Final = ("auth", "login")
READ_METHODS: Final = frozenset({"GET", "HEAD"})
CSRF_REFUSED: Final = (
    f"missing or wrong {CSRF_HEADER} header: a change made with the session cookie must "
    "carry the csrf_token that POST /api/auth/login (or GET /api/whoami) returned"
)
SESSION_ENDED: Final = "session expired or logged out: log in again"
_LOGIN_FIELDS: Final = ("username", "password")


class ApiAuth:
    """Authentication of /api requests and the session store they share."""

    def __init__(self, broker: ApiBroker | None) -> None:
        self.broker = broker
        idle = DEFAULT_IDLE_TIMEOUT_S
        if broker is not None:  # None: the route table alone (openapi, tests)
            idle = broker.settings.http_session_idle_timeout_s
        self.sessions = SessionStore(idle_timeout_s=idle)

    @staticmethod
    def _challenge(headers: Mapping[str, str]) -> dict[str, str]:
        if "x-requested-with" in headers or session_cookie_value(headers.get("cookie")):
            return {}
        return {"WWW-Authenticate": AUTH_REALM}

    async def authenticate(
        self, method: str, headers: Mapping[str, str], peer_host: str, tls: bool
    ) -> tuple[StoredUser, Session | None]:
        """The caller, and its session when the cookie authenticated it."""
        authorization = headers.get("authorization")
        if authorization:
            return await self._basic(authorization, headers, peer_host, tls), None
        session_id = session_cookie_value(headers.get("cookie"))
        if session_id is None:
            raise ApiError(
                401, AccessRefused.code, "authentication required", self._challenge(headers)
            )
        session, user = self._session_user(session_id)
        if method not in READ_METHODS and not session.csrf_ok(headers.get(CSRF_HEADER.lower())):
            raise ApiError(403, AccessRefused.code, CSRF_REFUSED)
        return user, session

    def _session_user(self, session_id: str) -> tuple[Session, StoredUser]:
        assert self.broker is not None
        session = self.sessions.get(session_id)
        stored = None if session is None else self.broker.authenticator.users.get(session.user)
        if session is None or stored is None or stored.password_hash != session.credential:
            # Deleted users and changed passwords end their sessions.
            if session is not None:
                self.sessions.delete(session.id)
            raise ApiError(401, AccessRefused.code, SESSION_ENDED)
        return session, stored

    async def _basic(
        self, authorization: str, headers: Mapping[str, str], peer_host: str, tls: bool
    ) -> StoredUser:
        challenge = self._challenge(headers)
        scheme, _, encoded = authorization.partition(" ")
        try:
            if scheme.lower() != "basic":
                raise ValueError("not basic")
            raw = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, binascii.Error):
            raise ApiError(
                401, AccessRefused.code, "use HTTP basic authentication", challenge
            ) from None
        username, sep, password = raw.partition(":")
        if not sep:
            raise ApiError(401, AccessRefused.code, "malformed basic credentials", challenge)
        return await self._check_password(
            username, password, peer_host, tls, MECHANISM_HTTP_BASIC, challenge
        )

    async def _check_password(
        self,
        username: str,
        password: str,
        peer_host: str,
        tls: bool,
        mechanism: str,
        challenge: dict[str, str],
    ) -> StoredUser:
        assert self.broker is not None
        authenticator = self.broker.authenticator
        try:
            user = await authenticator.authenticate_plain(
                username, password, peer_host, tls=tls, mechanism=mechanism, protocol="http"
            )
        except WharfError as exc:
            raise ApiError(401, AccessRefused.code, exc.message, challenge) from None
        stored = authenticator.users.get(user.name)
        if stored is None:  # deleted while its password was being checked
            raise ApiError(401, AccessRefused.code, "invalid credentials", challenge)
        return stored

    # -- login and logout ------------------------------------------------------------------

    async def login(
        self,
        headers: Mapping[str, str],
        body: bytes,
        peer_host: str,
        tls: bool,
        reply_headers: dict[str, str],
    ) -> Result:
        """``POST /api/auth/login``: JSON or form ``username``, ``password``; a new session
        (its cookie in ``reply_headers``) and its CSRF token."""
        username, password = _login_fields(headers.get("content-type"), body)
        stored = await self._check_password(
            username, password, peer_host, tls, MECHANISM_HTTP_LOGIN, {}
        )
        old = session_cookie_value(headers.get("cookie"))
        if old is not None:
            self.sessions.delete(old)  # a new login never reuses an id (session fixation)
        session = self.sessions.create(stored.name, stored.password_hash)
        reply_headers["Set-Cookie"] = set_cookie_header(session.id, secure=tls)
        return 200, {
            "name": stored.name,
            "tags": list(stored.tags),
            "csrf_token": session.csrf_token,
            "idle_timeout_s": self.sessions.idle_timeout_s,
        }

    async def logout(self, call: Call) -> Result:
        """``POST /api/auth/logout``: ends the caller's session and deletes its cookie
        (nothing to end under basic auth)."""
        assert self.broker is not None
        if call.session is not None:
            self.sessions.delete(call.session.id)
            self.broker.audit.event(
                AuditEvent.AUTH_LOGOUT, user=call.user.name, peer=call.peer, protocol="http"
            )
            call.reply_headers["Set-Cookie"] = set_cookie_header("", secure=call.tls, max_age_s=0)
        return 200, {}


def _login_fields(content_type: str | None, body: bytes) -> tuple[str, str]:
    if is_json_media_type(content_type):
        fields = Fields(parse_body(body), _LOGIN_FIELDS)
        username, password = fields.text("username"), fields.text("password")
    else:  # an HTML form (server.py lets only the login take one)
        try:
            form = urllib.parse.parse_qs(
                body.decode("utf-8"), keep_blank_values=True, errors="strict"
            )
        except UnicodeDecodeError:
            raise InvalidArgument("login form is not valid UTF-8") from None
        unknown = sorted(set(form) - set(_LOGIN_FIELDS))
        if unknown:
            raise InvalidArgument(f"unknown field {unknown[0]!r}; expected username, password")
        username = form.get("username", [""])[-1]
        password = form.get("password", [""])[-1]
    if not username or len(username) > MAX_USER_NAME_CHARS:
        raise InvalidArgument("field 'username' must be a user name")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidArgument(f"field 'password' must be at most {MAX_PASSWORD_CHARS} chars")
    return username, password
