"""The native connection's lifecycle table (broker/wire/native/lifecycle.py).

Every (state, event) pair is either in the table and lands on the documented state, or
raises IllegalTransition and leaves the state alone.
"""

from __future__ import annotations

import itertools

import pytest

from wharf.broker.wire.native.lifecycle import (
    ENDING,
    TRANSITIONS,
    UNAUTHENTICATED,
    Event,
    IllegalTransition,
    Lifecycle,
    State,
)

# The whole table, written out: what docs/architecture.md ("Connection states") shows.
EXPECTED: dict[tuple[State, Event], State] = {
    (State.AWAITING_HANDSHAKE, Event.HANDSHAKE): State.AWAITING_AUTH,
    (State.AWAITING_HANDSHAKE, Event.CLOSE): State.CLOSING,
    (State.AWAITING_HANDSHAKE, Event.LOST): State.CLOSED,
    (State.AWAITING_AUTH, Event.AUTH): State.AUTHENTICATING,
    (State.AWAITING_AUTH, Event.CLOSE): State.CLOSING,
    (State.AWAITING_AUTH, Event.LOST): State.CLOSED,
    (State.AUTHENTICATING, Event.AUTH_OK): State.OPEN,
    (State.AUTHENTICATING, Event.CLOSE): State.CLOSING,
    (State.AUTHENTICATING, Event.LOST): State.CLOSED,
    (State.AUTHENTICATING, Event.CHALLENGE): State.AWAITING_RESPONSE,
    (State.AWAITING_RESPONSE, Event.RESPONSE): State.AUTHENTICATING,
    (State.AWAITING_RESPONSE, Event.CLOSE): State.CLOSING,
    (State.AWAITING_RESPONSE, Event.LOST): State.CLOSED,
    (State.OPEN, Event.CLOSE): State.CLOSING,
    (State.OPEN, Event.LOST): State.CLOSED,
    (State.CLOSING, Event.LOST): State.CLOSED,
}

# The events that lead from the initial state to each state.
PATHS: dict[State, tuple[Event, ...]] = {
    State.AWAITING_HANDSHAKE: (),
    State.AWAITING_AUTH: (Event.HANDSHAKE,),
    State.AUTHENTICATING: (Event.HANDSHAKE, Event.AUTH),
    State.AWAITING_RESPONSE: (Event.HANDSHAKE, Event.AUTH, Event.CHALLENGE),
    State.OPEN: (Event.HANDSHAKE, Event.AUTH, Event.AUTH_OK),
    State.CLOSING: (Event.CLOSE,),
    State.CLOSED: (Event.LOST,),
}


def in_state(state: State) -> Lifecycle:
    lc = Lifecycle()
    for event in PATHS[state]:
        lc.transition(event)
    assert lc.state is state
    return lc


def test_table_is_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair_moves_as_the_table_says_or_raises(state: State, event: Event) -> None:
    lc = in_state(state)
    expected = EXPECTED.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            lc.transition(event)
        assert (info.value.state, info.value.event) == (state, event)
        assert lc.state is state
    else:
        assert lc.transition(event) is expected
        assert lc.state is expected


def test_a_new_connection_awaits_the_handshake() -> None:
    lc = Lifecycle()
    assert lc.state is State.AWAITING_HANDSHAKE
    assert not lc.opened


def test_opened_is_kept_through_closing_and_closed() -> None:
    lc = in_state(State.OPEN)
    assert lc.opened
    lc.transition(Event.CLOSE)
    lc.transition(Event.LOST)
    assert lc.state is State.CLOSED
    assert lc.opened


def test_a_refused_login_never_was_open() -> None:
    lc = in_state(State.AUTHENTICATING)
    lc.transition(Event.CLOSE)
    lc.transition(Event.LOST)
    assert not lc.opened


def test_closed_is_final() -> None:
    lc = in_state(State.CLOSED)
    for event in Event:
        with pytest.raises(IllegalTransition):
            lc.transition(event)


def test_scram_goes_round_the_challenge_once_then_opens() -> None:
    lc = in_state(State.AUTHENTICATING)
    assert lc.transition(Event.CHALLENGE) is State.AWAITING_RESPONSE
    with pytest.raises(IllegalTransition):
        lc.transition(Event.AUTH_OK)  # no AUTH_OK while the client's answer is due
    assert lc.transition(Event.RESPONSE) is State.AUTHENTICATING
    assert lc.transition(Event.AUTH_OK) is State.OPEN
    assert lc.opened


def test_a_response_without_a_challenge_is_illegal() -> None:
    for state in (State.AWAITING_AUTH, State.AUTHENTICATING, State.OPEN):
        with pytest.raises(IllegalTransition):
            in_state(state).transition(Event.RESPONSE)


def test_state_groups() -> None:
    assert {State.CLOSING, State.CLOSED} == ENDING
    assert {
        State.AWAITING_HANDSHAKE,
        State.AWAITING_AUTH,
        State.AUTHENTICATING,
        State.AWAITING_RESPONSE,
    } == UNAUTHENTICATED
