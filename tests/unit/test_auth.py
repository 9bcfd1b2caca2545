"""Password hashing, the guest/loopback rules, failure slowdown and the success cache."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from click.testing import CliRunner

from wharf.broker.cli.main import main
from wharf.broker.config import ConfigError, Settings, UserConfig
from wharf.broker.security import auth, passwords, throttle
from wharf.broker.security.auth import Authenticator, failure_delay_s
from wharf.broker.security.identity import User, is_loopback
from wharf.broker.security.passwords import hash_password, parse_password_hash, verify_password
from wharf.protocol.errors import AccessRefused, WharfError

APP_HASH = hash_password("app-pw")  # scrypt is slow on purpose: hash once per module


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)  # recorded, and time moves on at once
        self.now += seconds


@pytest.fixture
async def make_auth() -> AsyncIterator[Callable[..., tuple[Authenticator, FakeClock]]]:
    made: list[Authenticator] = []

    def make(**settings: Any) -> tuple[Authenticator, FakeClock]:
        clock = FakeClock()
        a = Authenticator(Settings(**settings), clock=clock, sleep=clock.sleep)
        made.append(a)
        return a, clock

    yield make
    for a in made:
        a.close()


# --- hashing ------------------------------------------------------------------------------


def test_hash_format_and_verify() -> None:
    stored = hash_password("correct horse")
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    params = parse_password_hash(stored)
    assert len(params.salt) == 16 and len(params.key) == 32
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert hash_password("correct horse") != stored  # random salt


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "bcrypt$1$2$3$AAAA$AAAA",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$1000$8$1$AAAA$AAAA",  # n not a power of two
        "scrypt$16384$8$1$!!!$AAAA",
        "scrypt$16384$8$1$$AAAA",
        "scrypt$4294967296$8$1$AAAA$AAAA",  # would need far too much memory
    ],
)
def test_malformed_hash_never_verifies(stored: str) -> None:
    with pytest.raises(ValueError):
        parse_password_hash(stored)
    assert verify_password("anything", stored) is False


def test_cli_hash_password() -> None:
    result = CliRunner().invoke(main, ["hash-password", "x"])
    assert result.exit_code == 0, result.output
    assert verify_password("x", result.output.strip())


def test_cli_hash_password_prompts() -> None:
    result = CliRunner().invoke(main, ["hash-password"], input="pw\npw\n")
    assert result.exit_code == 0, result.output
    stored = result.output.strip().splitlines()[-1]
    assert verify_password("pw", stored)
    assert "pw\n" not in result.output.replace(stored, "")  # hidden input is not echoed


# --- loopback rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2001:db8::1", False),
        ("", False),
        ("localhost", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "::ffff:127.0.0.2"])
async def test_guest_from_loopback(make_auth: Any, host: str) -> None:
    a, _ = make_auth()
    user = await a.authenticate("guest", "guest", host)
    assert user == User("guest", ("administrator",))


async def test_guest_refused_from_remote_host(make_auth: Any) -> None:
    a, _ = make_auth()
    with pytest.raises(AccessRefused) as info:
        await a.authenticate("guest", "guest", "10.1.2.3")
    assert "user 'guest' can only connect from loopback" in info.value.message
    assert isinstance(info.value, WharfError) and info.value.code == 403


async def test_empty_loopback_users_lets_guest_in_remotely(make_auth: Any) -> None:
    a, _ = make_auth(loopback_users=[])
    assert (await a.authenticate("guest", "guest", "10.1.2.3")).name == "guest"


async def test_wrong_password_and_unknown_user(make_auth: Any) -> None:
    a, _ = make_auth()
    for username, password in [("guest", "nope"), ("nobody", "guest")]:
        with pytest.raises(AccessRefused, match="invalid credentials"):
            await a.authenticate(username, password, "127.0.0.1")


async def test_default_user_disabled(make_auth: Any) -> None:
    a, _ = make_auth(default_user_enabled=False)
    with pytest.raises(AccessRefused, match="invalid credentials"):
        await a.authenticate("guest", "guest", "127.0.0.1")


async def test_configured_guest_replaces_default(make_auth: Any) -> None:
    a, _ = make_auth(users=[UserConfig("guest", APP_HASH, ["monitoring"])])
    with pytest.raises(AccessRefused):
        await a.authenticate("guest", "guest", "127.0.0.1")
    user = await a.authenticate("guest", "app-pw", "127.0.0.1")
    assert user == User("guest", ("monitoring",))
    with pytest.raises(AccessRefused, match="loopback"):  # still a loopback user
        await a.authenticate("guest", "app-pw", "192.168.0.9")


async def test_configured_user_from_anywhere(make_auth: Any) -> None:
    a, _ = make_auth(users=[UserConfig("app", APP_HASH, ["administrator"])])
    user = await a.authenticate("app", "app-pw", "203.0.113.7")
    assert user == User("app", ("administrator",))
    with pytest.raises(AccessRefused, match="invalid credentials"):
        await a.authenticate("app", "wrong", "203.0.113.7")


def test_bad_configured_hash_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'app'"):
        Authenticator(Settings(users=[UserConfig("app", "plaintext", [])]))


# --- failure slowdown (the throttle's own rules: test_login_throttle.py) ------------------


def test_failure_delay_schedule() -> None:
    assert [failure_delay_s(k) for k in range(0, 8)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert failure_delay_s(10_000) == 5.0


async def test_failures_delay_that_pair_only_and_never_a_success(make_auth: Any) -> None:
    a, clock = make_auth()
    for _ in range(4):
        with pytest.raises(AccessRefused):
            await a.authenticate("guest", "bad", "127.0.0.1")
    # Each failure's answer waits for the pair's next turn, growing.
    assert clock.slept == [0.1, 0.2, 0.4, 0.8]
    clock.slept.clear()
    await a.authenticate("guest", "guest", "127.0.0.1")  # a success is answered at once
    await a.authenticate("guest", "guest", "::1")  # another address: not affected
    assert clock.slept == []


async def test_ipv4_mapped_address_shares_the_failure_record(make_auth: Any) -> None:
    a, clock = make_auth(loopback_users=[])
    with pytest.raises(AccessRefused):
        await a.authenticate("guest", "bad", "10.0.0.1")
    with pytest.raises(AccessRefused):
        await a.authenticate("guest", "bad", "::ffff:10.0.0.1")
    assert clock.slept == [0.1, 0.2]


async def test_failures_decay_after_quiet_period(make_auth: Any) -> None:
    a, clock = make_auth()
    for _ in range(3):
        with pytest.raises(AccessRefused):
            await a.authenticate("guest", "bad", "127.0.0.1")
    assert a.tracked_failure_pairs == 1
    clock.now += auth.FAILURE_DECAY_S
    clock.slept.clear()
    with pytest.raises(AccessRefused):
        await a.authenticate("guest", "bad", "127.0.0.1")
    assert clock.slept == [0.1]  # counted from one again


async def test_success_forgets_the_pairs_failures(make_auth: Any) -> None:
    a, clock = make_auth()
    for _ in range(3):
        with pytest.raises(AccessRefused):
            await a.authenticate("guest", "bad", "127.0.0.1")
    await a.authenticate("guest", "guest", "127.0.0.1")
    assert a.tracked_failure_pairs == 0


async def test_failure_log_is_rate_limited_per_pair(
    make_auth: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, clock = make_auth()
    with caplog.at_level("DEBUG", logger="wharf.broker.security.auth"):
        for _ in range(5):
            with pytest.raises(AccessRefused):
                await a.authenticate("guest", "bad-pw-1", "127.0.0.1")
        with pytest.raises(AccessRefused):
            await a.authenticate("nobody", "bad-pw-2", "127.0.0.1")  # another pair
        await a.authenticate("guest", "guest", "127.0.0.1")
        lines = [r.getMessage() for r in caplog.records if r.name == "wharf.broker.security.auth"]
        assert len(lines) == 2  # one per pair; successes are not logged
        assert "'guest'" in lines[0] and "<unknown>" in lines[1]  # never the name typed
        clock.now += throttle.FAILURE_LOG_INTERVAL_S
        a.tick()  # the window ended: one summary line with the count left out
        lines = [r.getMessage() for r in caplog.records if r.name == "wharf.broker.security.auth"]
    assert len(lines) == 3
    assert "4 more refusals" in lines[2] and "'guest'" in lines[2]
    assert not any("bad-pw" in line for line in lines)  # never the password


async def test_every_failure_is_counted_by_mechanism(make_auth: Any) -> None:
    a, _ = make_auth()
    for mechanism in ("PLAIN", "PLAIN", "BASIC"):
        with pytest.raises(AccessRefused):
            await a.authenticate("nobody", "x", "127.0.0.1", mechanism=mechanism)
    assert a.failures_by_mechanism == {"PLAIN": 2, "BASIC": 1}


async def test_every_check_costs_one_scrypt_guest_unknown_and_stored(
    make_auth: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uniform timing: the built-in guest, an unknown user and a stored hash each pay one
    scrypt at the default cost for a check that is not a cached success."""
    calls: list[str] = []
    real_burn, real_verify = auth.burn_scrypt, auth.verify_password

    def burn(password: str) -> bool:
        calls.append("burn")
        return real_burn(password)

    def verify(password: str, stored: str) -> bool:
        calls.append("verify")
        return real_verify(password, stored)

    monkeypatch.setattr(auth, "burn_scrypt", burn)
    monkeypatch.setattr(auth, "verify_password", verify)
    a, _ = make_auth(users=[UserConfig("app", APP_HASH, [])])
    for user, password in [("guest", "bad"), ("nobody", "bad"), ("app", "bad"), ("guest", "guest")]:
        with contextlib.suppress(AccessRefused):
            await a.authenticate(user, password, "127.0.0.1")
    assert calls == ["burn", "burn", "verify", "burn"]
    calls.clear()
    await a.authenticate("guest", "guest", "127.0.0.1")  # a cached success, like any user's
    assert calls == []
    assert parse_password_hash(APP_HASH).n == passwords.SCRYPT_N  # burn's cost = a real one


# --- success cache ------------------------------------------------------------------------


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = auth.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    return calls


async def test_cache_skips_scrypt_on_repeat_success(
    make_auth: Any, scrypt_calls: list[str]
) -> None:
    a, _ = make_auth(users=[UserConfig("app", APP_HASH, [])])
    for _ in range(3):
        await a.authenticate("app", "app-pw", "10.0.0.1")
    assert scrypt_calls == ["app-pw"]
    # Failures are never cached: each wrong guess pays a scrypt.
    for _ in range(2):
        with pytest.raises(AccessRefused):
            await a.authenticate("app", "guess", "10.0.0.1")
    assert scrypt_calls == ["app-pw", "guess", "guess"]
    assert a.cache_size == 1


async def test_cache_is_bounded(
    make_auth: Any, scrypt_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "AUTH_CACHE_MAX_ENTRIES", 2)
    users = [UserConfig(f"u{i}", APP_HASH, []) for i in range(4)]
    a, _ = make_auth(users=users)
    for u in users:
        await a.authenticate(u.name, "app-pw", "10.0.0.1")
    assert a.cache_size == 2
    scrypt_calls.clear()
    await a.authenticate("u3", "app-pw", "10.0.0.1")  # most recent: cached
    assert scrypt_calls == []
    await a.authenticate("u0", "app-pw", "10.0.0.1")  # evicted: verified again
    assert scrypt_calls == ["app-pw"]
    assert a.cache_size == 2
