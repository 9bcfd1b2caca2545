"""The lifecycle of one SDK connection as a pure state machine (no I/O, h11-style).

``ConnectionCore`` (core.py) keeps one ``State`` and moves it only through
``next_state``; what is not in ``TRANSITIONS`` is a bug or a broker speaking out of
turn, and raises ``InvalidTransition``.  The error that ended a connection is kept
beside the state as data (``ConnectionCore.closed_error``); the state says which way
it ended: ``CLOSED`` when the application closed it, ``FAILED`` for everything else
(lost socket, fatal error, the broker's CLOSE, heartbeat timeout, refused login).

::

    CONNECTING --TRANSPORT_UP--> HANDSHAKING --HELLO--> AUTHENTICATING --AUTH_OK--> OPEN
    OPEN --CLOSE_SENT--> CLOSING --CLOSED--> CLOSED
    any live state --FAILED--> FAILED;  any live state --CLOSED--> CLOSED

Flow control (a paused transport, a scheduled flush) is not lifecycle and stays in
the core's own flags.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class State(enum.Enum):
    CONNECTING = "connecting"  # TCP connect under way
    HANDSHAKING = "handshaking"  # protocol header sent, waiting for HELLO
    AUTHENTICATING = "authenticating"  # HELLO read; AUTH goes out, waiting for AUTH_OK
    OPEN = "open"  # authenticated: requests, publishes, deliveries
    CLOSING = "closing"  # the client sent CLOSE, waiting for CLOSE_OK
    CLOSED = "closed"  # closed by the application (end state)
    FAILED = "failed"  # ended any other way (end state)


class Event(enum.Enum):
    TRANSPORT_UP = "transport_up"  # the TCP connection is made
    HELLO = "hello"  # the broker's HELLO was read
    AUTH_OK = "auth_ok"  # the broker's AUTH_OK was read
    CLOSE_SENT = "close_sent"  # the client sent CLOSE
    CLOSED = "closed"  # the application's close finished (or gave up waiting)
    FAILED = "failed"  # the connection ended otherwise


# States in which the connection still has a socket and can move on.
LIVE: Final = (
    State.CONNECTING,
    State.HANDSHAKING,
    State.AUTHENTICATING,
    State.OPEN,
    State.CLOSING,
)
# End states: no transition leaves them.  A tuple, not a set: ``in`` compares enum
# members by identity first, without hashing (this is checked on every call).
ENDED: Final = (State.CLOSED, State.FAILED)

TRANSITIONS: Final[Mapping[tuple[State, Event], State]] = {
    (State.CONNECTING, Event.TRANSPORT_UP): State.HANDSHAKING,
    (State.HANDSHAKING, Event.HELLO): State.AUTHENTICATING,
    (State.AUTHENTICATING, Event.AUTH_OK): State.OPEN,
    (State.OPEN, Event.CLOSE_SENT): State.CLOSING,
    # The application may close (and anything may fail) a connection at any point
    # before it has ended: an abandoned connect, a close during an outage.
    **{(state, Event.CLOSED): State.CLOSED for state in LIVE},
    **{(state, Event.FAILED): State.FAILED for state in LIVE},
}


class InvalidTransition(Exception):
    """``event`` cannot happen in ``state`` (e.g. a second HELLO from the broker)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event.value} is not expected in state {state.value}")
        self.state = state
        self.event = event


def next_state(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``; raises ``InvalidTransition``."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise InvalidTransition(state, event) from None


__all__ = ["ENDED", "LIVE", "TRANSITIONS", "Event", "InvalidTransition", "State", "next_state"]
