"""The lifecycle of one native-protocol connection, as an explicit state machine.

Pure logic, no I/O (in the manner of h11): ``Lifecycle.transition(event)`` moves the
one ``state`` field along the table below and raises ``IllegalTransition`` for any
other move, so a handler that runs in the wrong state fails loudly instead of
half-working.  The connection (connection.py) asks ``state`` wherever it used to ask
``closing``, ``closed`` or ``authenticated``.

::

    AWAITING_HANDSHAKE --HANDSHAKE--> AWAITING_AUTH --AUTH--> AUTHENTICATING
        --AUTH_OK--> OPEN
    AUTHENTICATING --CHALLENGE--> AWAITING_RESPONSE --RESPONSE--> AUTHENTICATING
        (multi-step mechanisms: SCRAM-SHA-256 goes round once)
    any state but CLOSING and CLOSED --CLOSE--> CLOSING
    any state but CLOSED --LOST--> CLOSED

docs/architecture.md ("Connection states") says what each state allows.
"""

from __future__ import annotations

import enum
from typing import Final


class State(enum.Enum):
    # The socket is accepted and HELLO sent; the client's 8 handshake bytes are due.
    AWAITING_HANDSHAKE = "awaiting_handshake"
    # The handshake was accepted; only AUTH (or HEARTBEAT) may come.
    AWAITING_AUTH = "awaiting_auth"
    # AUTH arrived and its credentials are being checked (off the frame handler).
    AUTHENTICATING = "authenticating"
    # AUTH_CHALLENGE was sent; only AUTH_RESPONSE (or HEARTBEAT) may come.
    AWAITING_RESPONSE = "awaiting_response"
    # AUTH_OK was sent: every frame a client sends is handled.
    OPEN = "open"
    # A fatal ERROR or CLOSE_OK was sent (or the peer answered with CLOSE_OK): the
    # transport is closing, nothing more is read or dispatched.
    CLOSING = "closing"
    # The transport is gone and the connection's state was released.
    CLOSED = "closed"


class Event(enum.Enum):
    HANDSHAKE = "handshake"  # the handshake bytes were accepted by the decoder
    AUTH = "auth"  # an AUTH frame arrived
    AUTH_OK = "auth_ok"  # its credentials were accepted and AUTH_OK sent
    CHALLENGE = "challenge"  # AUTH_CHALLENGE was sent (a multi-step mechanism)
    RESPONSE = "response"  # the client's AUTH_RESPONSE arrived
    CLOSE = "close"  # closing begins: fatal error, CLOSE answered, refused connection
    LOST = "lost"  # the transport reported the connection lost


class IllegalTransition(RuntimeError):
    """An event that the current state does not allow (a bug in the connection)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"event {event.name} is not allowed in state {state.name}")
        self.state = state
        self.event = event


_BEFORE_OPEN: Final = (
    State.AWAITING_HANDSHAKE,
    State.AWAITING_AUTH,
    State.AUTHENTICATING,
    State.AWAITING_RESPONSE,
)

TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (State.AWAITING_HANDSHAKE, Event.HANDSHAKE): State.AWAITING_AUTH,
    (State.AWAITING_AUTH, Event.AUTH): State.AUTHENTICATING,
    (State.AUTHENTICATING, Event.AUTH_OK): State.OPEN,
    (State.AUTHENTICATING, Event.CHALLENGE): State.AWAITING_RESPONSE,
    (State.AWAITING_RESPONSE, Event.RESPONSE): State.AUTHENTICATING,
    **{(s, Event.CLOSE): State.CLOSING for s in (*_BEFORE_OPEN, State.OPEN)},
    **{(s, Event.LOST): State.CLOSED for s in (*_BEFORE_OPEN, State.OPEN, State.CLOSING)},
}

# States in which nothing more is read, dispatched or sent but the last words.
ENDING: Final = frozenset({State.CLOSING, State.CLOSED})
# States before authentication: the handshake timeout applies.
UNAUTHENTICATED: Final = frozenset(_BEFORE_OPEN)


class Lifecycle:
    """The state of one connection, changed only by ``transition``."""

    __slots__ = ("state", "opened")

    def __init__(self) -> None:
        self.state = State.AWAITING_HANDSHAKE
        # History, not state: True once the connection has been OPEN (it stays True
        # through CLOSING and CLOSED), so a closed session is told from a refused login.
        self.opened = False

    def transition(self, event: Event) -> State:
        """Apply ``event``; returns the new state or raises ``IllegalTransition``."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise IllegalTransition(self.state, event)
        self.state = new
        if new is State.OPEN:
            self.opened = True
        return new
