"""SCRAM-SHA-256 credentials and exchange, the PLAIN policy, EXTERNAL's certificate
mapping and the SDK's choice of mechanism: pure logic, no sockets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import scramp

from wharf.broker.config import ConfigError, Settings, UserConfig, load_settings
from wharf.broker.security.auth import Authenticator
from wharf.broker.security.cert_login import user_from_cert
from wharf.broker.security.passwords import (
    SCRAM_ITERATIONS,
    hash_password,
    make_scram_credential,
    parse_scram_credential,
)
from wharf.broker.security.users import UserStore
from wharf.protocol.errors import AccessRefused, InvalidArgument
from wharf.scram import ScramLogin, choose_mechanism
from wharf.url import parse_url

APP_PASSWORD = "app-pw"
APP_HASH = hash_password(APP_PASSWORD)  # scrypt is slow on purpose: once per module
APP_SCRAM = make_scram_credential(APP_PASSWORD)
REMOTE = "10.1.2.3"


@pytest.fixture
async def make_auth() -> AsyncIterator[Callable[..., Authenticator]]:
    made: list[Authenticator] = []

    def make(**settings: Any) -> Authenticator:
        a = Authenticator(Settings(**settings))
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


async def scram_login(
    a: Authenticator, user: str, password: str, peer: str = "127.0.0.1"
) -> tuple[Any, ScramLogin, str]:
    """Run the whole exchange: (user, the client, the server-final message)."""
    client = ScramLogin(user, password)
    conversation = a.scram_conversation(peer)
    server_first = conversation.server_first(client.client_first())
    found, server_final = await conversation.server_final(client.client_final(server_first))
    return found, client, server_final


# --- stored credentials -----------------------------------------------------------------


def test_scram_credential_round_trip_matches_scramp() -> None:
    cred = parse_scram_credential(APP_SCRAM)
    assert cred.iterations == SCRAM_ITERATIONS
    salt, stored, server, i = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        APP_PASSWORD, iteration_count=cred.iterations, salt=cred.salt
    )
    assert (stored, server, i) == (cred.stored_key, cred.server_key, cred.iterations)
    assert make_scram_credential(APP_PASSWORD) != APP_SCRAM  # a fresh salt each time


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "scrypt$16384$8$1$AAAA$AAAA",
        "SCRAM-SHA-256$4096$c2FsdA==$AAAA$AAAA",  # keys too short
        "SCRAM-SHA-256$10$c2FsdA==$" + "A" * 43 + "=$" + "A" * 43 + "=",  # too few iterations
        "SCRAM-SHA-256$4096$!!$" + "A" * 43 + "=$" + "A" * 43 + "=",
    ],
)
def test_malformed_scram_credential_is_refused(stored: str) -> None:
    with pytest.raises(ValueError):
        parse_scram_credential(stored)


def test_config_user_may_carry_a_scram_credential() -> None:
    s = Settings(users=[UserConfig("app", APP_HASH, [], APP_SCRAM)])
    assert s.users[0].scram_sha_256 == APP_SCRAM
    with pytest.raises(ConfigError, match="scram_sha_256"):
        load_settings(
            None,
            {"users": [{"name": "a", "password_hash": APP_HASH, "scram_sha_256": "nope"}]},
            environ={},
        )


def test_upgrade_keeps_config_users_in_memory_and_saves_runtime_ones() -> None:
    from wharf.broker.security.identity import User
    from wharf.broker.security.users import SOURCE_CONFIG, StoredUser

    store = UserStore([StoredUser(User("cfg"), APP_HASH, SOURCE_CONFIG)])
    saved: list[int] = []
    store.on_change = lambda: saved.append(1)
    assert store.upgrade_scram("cfg", APP_HASH, APP_SCRAM)
    assert store.get("cfg").scram == APP_SCRAM  # type: ignore[union-attr]
    assert store.runtime_records() == [] and saved == []  # the TOML entry still rules
    store.put("rt", APP_HASH, [])
    assert not store.upgrade_scram("rt", "scrypt$other", APP_SCRAM)  # password changed
    assert store.upgrade_scram("rt", APP_HASH, APP_SCRAM)
    assert not store.upgrade_scram("rt", APP_HASH, APP_SCRAM)  # once
    assert store.runtime_records() == [
        {"name": "rt", "password_hash": APP_HASH, "tags": [], "scram_sha_256": APP_SCRAM}
    ]
    # A record written before SCRAM (no scram_sha_256) still loads.
    old = UserStore([])
    old.load_runtime([{"name": "rt", "password_hash": APP_HASH, "tags": []}])
    assert old.get("rt") is not None and old.get("rt").scram is None  # type: ignore[union-attr]


# --- the SCRAM exchange -----------------------------------------------------------------


async def test_scram_success_and_the_server_proves_it_knows_the_credential(
    make_auth: Callable[..., Authenticator],
) -> None:
    a = make_auth(users=[UserConfig("app", APP_HASH, ["monitoring"], APP_SCRAM)])
    user, client, server_final = await scram_login(a, "app", APP_PASSWORD, REMOTE)
    assert user.name == "app"
    client.check_server_final(server_final)  # the signature checks out
    with pytest.raises(AccessRefused, match="signature is wrong"):
        forged = "v=" + base64.b64encode(b"\0" * 32).decode()
        ScramLogin("app", APP_PASSWORD).check_server_final(forged)


async def test_built_in_guest_has_a_scram_credential(
    make_auth: Callable[..., Authenticator],
) -> None:
    a = make_auth()
    user, _, _ = await scram_login(a, "guest", "guest")
    assert user.name == "guest"
    with pytest.raises(AccessRefused, match="loopback"):
        await scram_login(a, "guest", "guest", REMOTE)


@pytest.mark.parametrize("who", ["wrong-password", "unknown-user", "not-upgraded"])
async def test_scram_refusals_look_alike_and_are_counted(
    make_auth: Callable[..., Authenticator], who: str
) -> None:
    a = make_auth(
        users=[
            UserConfig("app", APP_HASH, [], APP_SCRAM),
            UserConfig("old", APP_HASH, []),  # stored before SCRAM: scrypt only
        ]
    )
    user, password = {
        "wrong-password": ("app", "nope"),
        "unknown-user": ("nobody", APP_PASSWORD),
        "not-upgraded": ("old", APP_PASSWORD),
    }[who]
    with pytest.raises(AccessRefused) as info:
        await scram_login(a, user, password)
    assert info.value.message == "invalid credentials"  # says nothing about which case
    assert a.failures_by_mechanism == {"SCRAM-SHA-256": 1}


async def test_stand_in_salt_is_stable_per_name(make_auth: Callable[..., Authenticator]) -> None:
    a = make_auth()
    salts = []
    for _ in range(2):
        first = a.scram_conversation("127.0.0.1").server_first("n,,n=nobody,r=abcdefgh")
        salts.append(dict(p.split("=", 1) for p in first.split(","))["s"])
    assert salts[0] == salts[1]


@pytest.mark.parametrize(
    "client_first", ["", "garbage", "x,,n=a,r=b", "n,,n=,r=", "n,,n=a\u0000,r=b" + "x" * 5000]
)
async def test_malformed_client_first_is_refused(
    make_auth: Callable[..., Authenticator], client_first: str
) -> None:
    a = make_auth()
    with pytest.raises(AccessRefused):
        a.scram_conversation("127.0.0.1").server_first(client_first)


async def test_plain_login_upgrades_a_scrypt_only_user(
    make_auth: Callable[..., Authenticator],
) -> None:
    a = make_auth(users=[UserConfig("old", APP_HASH, [])])
    with pytest.raises(AccessRefused):
        await scram_login(a, "old", APP_PASSWORD)
    await a.authenticate_plain("old", APP_PASSWORD, "127.0.0.1", tls=False)
    user, _, _ = await scram_login(a, "old", APP_PASSWORD)
    assert user.name == "old"


# --- PLAIN policy and mechanisms offered -------------------------------------------------


async def test_plain_is_refused_off_loopback_without_tls(
    make_auth: Callable[..., Authenticator],
) -> None:
    a = make_auth(users=[UserConfig("app", APP_HASH, [])])
    with pytest.raises(AccessRefused, match="allow_plain_without_tls"):
        await a.authenticate_plain("app", APP_PASSWORD, REMOTE, tls=False)
    assert a.failures_by_mechanism == {"PLAIN": 1}
    assert (await a.authenticate_plain("app", APP_PASSWORD, REMOTE, tls=True)).name == "app"
    assert (await a.authenticate_plain("app", APP_PASSWORD, "::1", tls=False)).name == "app"
    assert a.mechanisms(REMOTE, tls=False) == ["SCRAM-SHA-256"]
    assert a.mechanisms(REMOTE, tls=True) == ["SCRAM-SHA-256", "PLAIN"]
    assert a.mechanisms("127.0.0.1", tls=False, peer_cert=True) == ["SCRAM-SHA-256", "PLAIN"]


async def test_allow_plain_without_tls(make_auth: Callable[..., Authenticator]) -> None:
    a = make_auth(users=[UserConfig("app", APP_HASH, [])], allow_plain_without_tls=True)
    assert (await a.authenticate_plain("app", APP_PASSWORD, REMOTE, tls=False)).name == "app"
    assert a.mechanisms(REMOTE, tls=False) == ["SCRAM-SHA-256", "PLAIN"]


# --- EXTERNAL ------------------------------------------------------------------------------

CERT: dict[str, Any] = {
    "subject": ((("organizationName", "Acme"),), (("commonName", "app"),)),
    "subjectAltName": (("email", "app@example.com"), ("DNS", "app.example.com")),
}


def test_user_from_cert_modes() -> None:
    assert user_from_cert(CERT, "common_name") == "app"
    assert user_from_cert(CERT, "subject_alt_name_dns") == "app.example.com"
    assert user_from_cert(CERT, "subject_alt_name_email") == "app@example.com"
    assert user_from_cert(CERT, "none") is None
    assert user_from_cert({}, "common_name") is None
    assert user_from_cert(None, "common_name") is None


async def test_external(make_auth: Callable[..., Authenticator]) -> None:
    a = make_auth(users=[UserConfig("app", APP_HASH, [])], tls_cert_login="common_name")
    assert (await a.authenticate_external(CERT, REMOTE)).name == "app"
    assert (await a.authenticate_external(CERT, REMOTE, authzid="app")).name == "app"
    with pytest.raises(AccessRefused, match="not 'other'"):
        await a.authenticate_external(CERT, REMOTE, authzid="other")
    stranger = {"subject": ((("commonName", "stranger"),),)}
    with pytest.raises(AccessRefused, match="'stranger', which does not exist"):
        await a.authenticate_external(stranger, REMOTE)
    with pytest.raises(AccessRefused, match="client certificate"):
        await a.authenticate_external(None, REMOTE)
    assert a.failures_by_mechanism == {"EXTERNAL": 3}
    assert a.mechanisms(REMOTE, tls=True, peer_cert=True)[-1] == "EXTERNAL"
    off = make_auth(users=[UserConfig("app", APP_HASH, [])])
    with pytest.raises(AccessRefused, match="not enabled"):
        await off.authenticate_external(CERT, REMOTE)


# --- the SDK's side --------------------------------------------------------------------------


def test_choose_mechanism() -> None:
    both = ["SCRAM-SHA-256", "PLAIN"]
    assert choose_mechanism(both, None, "pw") == "SCRAM-SHA-256"
    assert choose_mechanism(["PLAIN"], None, "pw") == "PLAIN"
    assert choose_mechanism(both, "PLAIN", "pw") == "PLAIN"
    assert choose_mechanism([*both, "EXTERNAL"], None, "") == "EXTERNAL"
    with pytest.raises(AccessRefused, match="allow_plain_without_tls"):
        choose_mechanism(["SCRAM-SHA-256"], "PLAIN", "pw")
    with pytest.raises(AccessRefused, match="client certificate"):
        choose_mechanism(both, "EXTERNAL", "")


def test_url_auth_mechanism_option() -> None:
    assert parse_url("wharf://a:b@h?auth_mechanism=plain").auth_mechanism == "PLAIN"
    assert parse_url("wharfs://a@h?auth_mechanism=EXTERNAL&cafile=c").auth_mechanism == ("EXTERNAL")
    assert parse_url("wharf://a:b@h").auth_mechanism is None
    with pytest.raises(InvalidArgument, match="auth_mechanism"):
        parse_url("wharf://a:b@h?auth_mechanism=CRAM-MD5")
    with pytest.raises(InvalidArgument, match="cafile"):
        parse_url("wharf://a:b@h?cafile=c")  # TLS options only on wharfs://
