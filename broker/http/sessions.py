"""Browser sessions for the management API: the web UI's login cookie and CSRF tokens.

``POST /api/auth/login`` checks a user name and password exactly as HTTP basic does
(security/auth.py: the same users, loopback rule, plain-over-plain-HTTP rule, slowdown of
failures and audit lines) and creates a session here: a random 256-bit id sent as the
``wharf_session`` cookie (HttpOnly, SameSite=Strict, Secure over HTTPS), and a CSRF token
that every non-GET request authenticated by that cookie must echo in ``X-CSRF-Token``.
Sessions live in memory only (a restart logs everyone out), end after
``http_session_idle_timeout_s`` without a request, after ABSOLUTE_TIMEOUT_S in any case,
at logout, and when the user is deleted or its password changes.  API clients keep
using basic auth, which never needs a CSRF token: a browser cannot forge an
``Authorization`` header for another site.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

SESSION_COOKIE: Final = "wharf_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_ID_BYTES: Final = 32  # 256 bits from the OS's CSPRNG
CSRF_TOKEN_BYTES: Final = 32
DEFAULT_IDLE_TIMEOUT_S: Final = 1800
# However active, a session ends this long after its login (a stolen cookie stays useful
# for a bounded time only).
ABSOLUTE_TIMEOUT_S: Final = 12 * 3600
# Sessions kept at once: a script logging in in a loop evicts the least recently used
# sessions instead of growing the broker's memory.
MAX_SESSIONS: Final = 10_000
# Longest cookie value looked at: ids are 43 characters of URL-safe base64.
MAX_COOKIE_VALUE_CHARS: Final = 128


@dataclass(slots=True)
class Session:
    id: str
    user: str
    csrf_token: str
    created: float  # the store's clock (monotonic seconds)
    last_seen: float
    # The user's password hash at login: a changed password ends the session.
    credential: str | None

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (compared in constant time)."""
        if token is None:
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf_token.encode())


class SessionStore:
    """The broker's open browser sessions, by id."""

    def __init__(
        self,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        absolute_timeout_s: float = ABSOLUTE_TIMEOUT_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.absolute_timeout_s = absolute_timeout_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}  # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, credential: str | None) -> Session:
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        session = Session(
            id=secrets.token_urlsafe(SESSION_ID_BYTES),
            user=user,
            csrf_token=secrets.token_urlsafe(CSRF_TOKEN_BYTES),
            created=now,
            last_seen=now,
            credential=credential,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id (its idle time starts again), or None."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        # Most recently used last: eviction takes the first.
        del self._sessions[session_id]
        self._sessions[session_id] = session
        return session

    def delete(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def _expired(self, session: Session, now: float) -> bool:
        return (
            now - session.last_seen >= self.idle_timeout_s
            or now - session.created >= self.absolute_timeout_s
        )

    def _expire(self, now: float) -> None:
        stale = [s.id for s in self._sessions.values() if self._expired(s, now)]
        for session_id in stale:
            del self._sessions[session_id]


def session_cookie_value(cookie_header: str | None) -> str | None:
    """The ``wharf_session`` value of a Cookie header, or None (absent or malformed)."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name == SESSION_COOKIE:
            value = value.strip().strip('"')
            if 0 < len(value) <= MAX_COOKIE_VALUE_CHARS:
                return value
            return None
    return None


def set_cookie_header(session_id: str, *, secure: bool, max_age_s: int | None = None) -> str:
    """The Set-Cookie value for a session (``max_age_s=0``: delete the cookie)."""
    parts = [f"{SESSION_COOKIE}={session_id}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age_s is not None:
        parts.append(f"Max-Age={max_age_s}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
