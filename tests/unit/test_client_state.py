"""The SDK connection's state machine (client/state.py): the transition table alone."""

from __future__ import annotations

import itertools

import pytest

from wharf.state import ENDED, LIVE, TRANSITIONS, Event, InvalidTransition, State, next_state


def test_happy_path_open_then_closed_by_the_application() -> None:
    state = State.CONNECTING
    seen = [state]
    for event in (
        Event.TRANSPORT_UP,
        Event.HELLO,
        Event.AUTH_OK,
        Event.CLOSE_SENT,
        Event.CLOSED,
    ):
        state = next_state(state, event)
        seen.append(state)
    assert seen == [
        State.CONNECTING,
        State.HANDSHAKING,
        State.AUTHENTICATING,
        State.OPEN,
        State.CLOSING,
        State.CLOSED,
    ]


@pytest.mark.parametrize("state", LIVE)
def test_every_live_state_can_fail_or_be_closed(state: State) -> None:
    assert next_state(state, Event.FAILED) is State.FAILED
    assert next_state(state, Event.CLOSED) is State.CLOSED


@pytest.mark.parametrize(("state", "event"), list(itertools.product(ENDED, Event)))
def test_nothing_leaves_an_end_state(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition):
        next_state(state, event)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.CONNECTING, Event.HELLO),  # HELLO before the connection is made
        (State.HANDSHAKING, Event.AUTH_OK),  # AUTH_OK before HELLO
        (State.AUTHENTICATING, Event.HELLO),  # a second HELLO
        (State.OPEN, Event.HELLO),
        (State.OPEN, Event.AUTH_OK),
        (State.HANDSHAKING, Event.CLOSE_SENT),  # CLOSE is only sent on an open connection
        (State.CLOSING, Event.CLOSE_SENT),
        (State.OPEN, Event.TRANSPORT_UP),
    ],
)
def test_out_of_turn_events_are_refused(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition, match=f"{event.value} is not expected"):
        next_state(state, event)


def test_the_table_covers_every_state_and_leads_only_to_known_states() -> None:
    sources = {state for state, _ in TRANSITIONS}
    assert sources == set(LIVE)
    assert set(LIVE) | set(ENDED) == set(State)
    assert set(TRANSITIONS.values()) <= set(State) - {State.CONNECTING}
