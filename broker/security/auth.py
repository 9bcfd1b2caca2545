"""The broker's authenticator: every wire adapter's one way to decide who a client is.

Protocol-neutral entry points (the native wire, HTTP and AMQP call these; no adapter
decides anything about credentials):

* ``authenticate_plain(user, password, peer_host, tls=...)``: PLAIN, AMQPLAIN, HTTP basic.
  Refused on a connection without TLS from a non-loopback address unless
  ``allow_plain_without_tls`` (the password would cross the network in clear).
* ``scram_conversation(peer_host, ...)``: a SCRAM-SHA-256 exchange (scram.py), two
  steps; the password never crosses the wire, and the broker proves it knows the
  credential with its final message.
* ``authenticate_external(peer_cert, peer_host, ...)``: EXTERNAL, the user a verified
  client certificate names (``tls_cert_login``, cert_login.py).
* ``mechanisms(peer_host, tls=..., peer_cert=...)``: what to offer a connection.

Authentication rules:

* The built-in ``guest`` user (password ``guest``) exists unless ``default_user_enabled``
  is false or a configured ``[[users]]`` entry named guest replaces it.
* Users live in a ``users.UserStore`` (``Authenticator.users``): the configured ones plus
  runtime changes made through the management API, which override them (see users.py).
* Users listed in ``loopback_users`` may only connect from 127.0.0.0/8 or ::1
  (IPv4-mapped ::ffff:127.x counts as loopback).  Checked after the password, so the
  message reveals nothing to someone who does not know it.
* scrypt costs ~50-100 ms of CPU and 16 MiB per check, so it runs in a small dedicated
  thread pool (bounded memory) instead of on the event loop.  Every check that is not a
  cached success costs one scrypt at the default cost, whether the user exists, is the
  built-in guest or has a stored hash, so timing does not tell them apart.
* Guessing is throttled per (user, address) pair and serialised per user and per
  address; a correct password is not delayed by other pairs' failures (throttle.py).
* Failures are logged at most once per pair per minute, with a count of the others;
  every attempt goes to the audit log (audit.py).  Passwords are never logged.
* SCRAM proofs go through the same throttle; a wrong proof costs one scrypt before it is
  refused, as a wrong PLAIN password does, so guessing is paced alike.
* The upgrade: a user whose only credential is a scrypt hash (stored before SCRAM) gets
  its SCRAM-SHA-256 credential at its next successful PLAIN login (users.upgrade_scram).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from wharf.protocol.errors import AccessRefused, WharfError

from .audit import AuditEvent, AuditLog
from .cert_login import CERT_LOGIN_NONE, user_from_cert
from .identity import (
    DEFAULT_USER,
    INVALID_CREDENTIALS,
    MECHANISM_EXTERNAL,
    MECHANISM_HTTP_BASIC,
    MECHANISM_HTTP_LOGIN,
    MECHANISM_PLAIN,
    MECHANISM_SCRAM,
    RefusedLogin,
    User,
    host_key,
    is_loopback,
)
from .passwords import (
    SCRAM_ITERATIONS,
    SCRAM_SALT_BYTES,
    ScramCredential,
    burn_scrypt,
    hash_password,
    make_scram_credential,
    parse_password_hash,
    parse_scram_credential,
    verify_password,
)
from .scram import ScramConversation
from .throttle import (
    FAILURE_DECAY_S,
    FAILURE_LOG_INTERVAL_S,
    Attempt,
    FailureLogLimiter,
    LoginThrottle,
    TooManyAttempts,
    failure_delay_s,
)
from .users import SOURCE_BUILTIN, SOURCE_CONFIG, StoredUser, UserStore

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

# Concurrent scrypt checks; each holds 128 * r * n bytes (16 MiB at the defaults).
SCRYPT_WORKERS: Final = 4

DEFAULT_PASSWORD: Final = "guest"
DEFAULT_USER_TAGS: Final = ("administrator",)

# Successful (user, password digest) pairs remembered so that a reconnect storm (a broker
# restart or a network blip makes thousands of clients log in at once) costs one scrypt
# per distinct credential instead of one per connection.  Only successes are cached, so
# guessing passwords still pays a full scrypt per attempt.  The digest is an HMAC-SHA256
# under a per-process random key: a memory dump does not yield a fast unsalted hash.
# The cache is consulted only once an attempt has its turn (throttle.py), so it is no
# faster oracle for a guesser than scrypt.
AUTH_CACHE_MAX_ENTRIES: Final = 1_024

# How a refused login under a name that is no user is recorded (logs, audit).
UNKNOWN_USER: Final = "<unknown>"
UNKNOWN_USER_REF_CHARS: Final = 12

__all__ = ["FAILURE_DECAY_S", "failure_delay_s"]  # re-exported for callers and tests

_T = TypeVar("_T")


def plain_refusal_message(mechanism: str) -> str:
    """Why PLAIN (or HTTP basic) is refused on this connection, and what to do."""
    if mechanism == MECHANISM_HTTP_LOGIN:
        return (
            "a login over plain HTTP from a non-loopback address would send the password "
            "in clear: use HTTPS (https_port), or set allow_plain_without_tls = true on "
            "the broker"
        )
    if mechanism == MECHANISM_HTTP_BASIC:
        return (
            "HTTP basic authentication over plain HTTP from a non-loopback address would "
            "send the password in clear: use HTTPS (https_port), or set "
            "allow_plain_without_tls = true on the broker"
        )
    return (
        f"{mechanism} sends the password in clear and this connection has no TLS and "
        "is not from loopback: use SCRAM-SHA-256 (the SDK's default), connect with TLS "
        "(wharfs://, tls_port), or set allow_plain_without_tls = true on the broker"
    )


@dataclass(frozen=True, slots=True)
class _Verdict:
    user: User | None
    error: WharfError | None
    delay_s: float


class Authenticator:
    """Checks PLAIN credentials against the configured users; one per broker."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        audit: AuditLog | None = None,
    ) -> None:
        initial: dict[str, StoredUser] = {}
        for cfg in settings.users:
            try:
                parse_password_hash(cfg.password_hash)
            except ValueError as exc:
                from ..config import ConfigError  # config imports this module

                raise ConfigError(f"users: {cfg.name!r}: {exc}") from None
            initial[cfg.name] = StoredUser(
                User(cfg.name, tuple(cfg.tags)), cfg.password_hash, SOURCE_CONFIG, cfg.scram_sha_256
            )
        if settings.default_user_enabled and DEFAULT_USER not in initial:
            initial[DEFAULT_USER] = StoredUser(
                User(DEFAULT_USER, DEFAULT_USER_TAGS), None, SOURCE_BUILTIN
            )
        # Effective users: config + runtime changes; the broker loads and persists these.
        self.users = UserStore(initial.values())
        self._loopback_users = frozenset(settings.loopback_users)
        self.allow_plain_without_tls = settings.allow_plain_without_tls
        self.cert_login = settings.tls_cert_login
        # The built-in guest password's SCRAM credential (PBKDF2, ~3 ms, once).
        self._guest_scram = parse_scram_credential(make_scram_credential(DEFAULT_PASSWORD))
        self._clock = clock
        self._sleep = sleep
        self.audit = audit if audit is not None else AuditLog(None)
        self._cache_key = os.urandom(32)
        self._cache: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._throttle = LoginThrottle(clock)
        self._failure_log = FailureLogLimiter(clock)
        self._wake: asyncio.TimerHandle | None = None
        self._checks: set[asyncio.Task[_Verdict]] = set()
        self._executor: ThreadPoolExecutor | None = None
        # wharf_auth_failures_total{mechanism}: plain ints, read at scrape time.
        self.failures_by_mechanism: dict[str, int] = {}

    # -- what a connection may use ------------------------------------------------------

    def plain_allowed(self, peer_host: str, *, tls: bool) -> bool:
        """Whether a password may be sent in clear (PLAIN, HTTP basic) on this connection."""
        return tls or self.allow_plain_without_tls or is_loopback(peer_host)

    def mechanisms(self, peer_host: str, *, tls: bool, peer_cert: bool = False) -> list[str]:
        """Mechanisms to offer, best first: SCRAM-SHA-256, then PLAIN where a password may
        travel in clear, then EXTERNAL when a verified client certificate can log in."""
        offered = [MECHANISM_SCRAM]
        if self.plain_allowed(peer_host, tls=tls):
            offered.append(MECHANISM_PLAIN)
        if peer_cert and self.cert_login != CERT_LOGIN_NONE:
            offered.append(MECHANISM_EXTERNAL)
        return offered

    # -- protocol-neutral entry points -------------------------------------------------

    async def authenticate_plain(
        self,
        username: str,
        password: str,
        peer_host: str,
        *,
        tls: bool,
        mechanism: str = MECHANISM_PLAIN,
        protocol: str = "native",
        peer: str | None = None,
    ) -> User:
        """A user name and password in clear (PLAIN, AMQPLAIN, HTTP basic): the user, or
        AccessRefused.  Refused before any check on a connection without TLS from a
        non-loopback address unless ``allow_plain_without_tls``."""
        if not self.plain_allowed(peer_host, tls=tls):
            reason = plain_refusal_message(mechanism)
            where = peer if peer is not None else peer_host
            pair = (username, host_key(peer_host))  # its log lines are rate-limited
            self.note_failure(username, where, mechanism, protocol, reason, pair=pair)
            raise AccessRefused(reason)
        return await self.authenticate(
            username, password, peer_host, mechanism=mechanism, protocol=protocol, peer=peer
        )

    def scram_conversation(
        self, peer_host: str, *, protocol: str = "native", peer: str | None = None
    ) -> ScramConversation:
        """A SCRAM-SHA-256 exchange for one connection (scram.py)."""
        return ScramConversation(self, peer_host, protocol, peer if peer is not None else peer_host)

    async def authenticate_external(
        self,
        peer_cert: Any,
        peer_host: str,
        *,
        authzid: str = "",
        protocol: str = "native",
        peer: str | None = None,
    ) -> User:
        """EXTERNAL: the user a verified client certificate (``getpeercert()``'s dict)
        names under ``tls_cert_login``; ``authzid`` (optional) must be that name.  The
        certificate was verified by the TLS handshake, so nothing is guessed here and
        the login throttle does not apply."""
        where = peer if peer is not None else peer_host
        name = user_from_cert(peer_cert, self.cert_login)
        reason: str | None = None
        if self.cert_login == CERT_LOGIN_NONE:
            reason = "EXTERNAL is not enabled on this broker (tls_cert_login = none)"
        elif not peer_cert:
            reason = "EXTERNAL needs a client certificate signed by the broker's tls_ca_file"
        elif name is None:
            reason = f"the client certificate names no user (tls_cert_login = {self.cert_login})"
        elif authzid and authzid != name:
            reason = f"the client certificate is for user {name!r}, not {authzid!r}"
        account = self.users.get(name) if name is not None else None
        if reason is None and account is None:
            reason = f"the client certificate names user {name!r}, which does not exist"
        if reason is None and name in self._loopback_users and not is_loopback(peer_host):
            reason = f"user {name!r} can only connect from loopback (127.0.0.1 or ::1)"
        if reason is not None or account is None:
            refused = reason or INVALID_CREDENTIALS
            who = name if name is not None else authzid
            pair = (who, host_key(peer_host))
            self.note_failure(who, where, MECHANISM_EXTERNAL, protocol, refused, pair=pair)
            raise AccessRefused(refused)
        self.audit.event(
            AuditEvent.AUTH_SUCCESS,
            user=account.name,
            peer=where,
            protocol=protocol,
            mechanism=MECHANISM_EXTERNAL,
        )
        return account.user

    async def authenticate(
        self,
        username: str,
        password: str,
        peer_host: str,
        *,
        mechanism: str = MECHANISM_PLAIN,
        protocol: str = "native",
        peer: str | None = None,
    ) -> User:
        """Check a password (no transport policy: ``authenticate_plain`` applies that).
        Return the user or raise AccessRefused.

        Waits for its turn (throttle.py), then checks; a failure's answer is delayed by
        the pair's new delay.  The check itself runs to its end even if the caller goes
        away, so closing a connection cannot cut a guess's delay short.
        """
        return await self.throttled(
            username,
            peer_host,
            lambda: self._check(username, password, peer_host),
            mechanism=mechanism,
            protocol=protocol,
            peer=peer,
        )

    async def throttled(
        self,
        username: str,
        peer_host: str,
        check: Callable[[], Awaitable[User]],
        *,
        mechanism: str,
        protocol: str,
        peer: str | None,
    ) -> User:
        """Run ``check`` (which raises AccessRefused or RefusedLogin to refuse) when the
        pair's turn has come, and record, audit and delay its outcome as every login does."""
        host = host_key(peer_host)
        where = peer if peer is not None else peer_host
        try:
            attempt = self._throttle.enqueue(username, host)
        except TooManyAttempts as exc:
            self.note_failure(username, where, mechanism, protocol, str(exc), pair=None)
            raise AccessRefused(str(exc)) from None
        loop = asyncio.get_running_loop()
        attempt.waiter = loop.create_future()
        self._pump()
        try:
            await attempt.waiter
        except asyncio.CancelledError:
            self._throttle.cancel(attempt)
            self._pump()
            raise
        task = loop.create_task(
            self._check_admitted(attempt, username, check, where, mechanism, protocol)
        )
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        task.add_done_callback(_retrieve)
        verdict = await asyncio.shield(task)
        if verdict.error is None:
            assert verdict.user is not None
            return verdict.user
        if verdict.delay_s > 0:
            await self._sleep(verdict.delay_s)
        raise verdict.error

    async def _check_admitted(
        self,
        attempt: Attempt,
        username: str,
        check: Callable[[], Awaitable[User]],
        where: str,
        mechanism: str,
        protocol: str,
    ) -> _Verdict:
        pair = attempt.pair
        try:
            try:
                user = await check()
            except RefusedLogin as refused:
                delay = self._throttle.record_failure(pair)
                self.note_failure(
                    username, where, mechanism, protocol, refused.logged_reason, pair=pair
                )
                return _Verdict(None, AccessRefused(refused.told), delay)
            except AccessRefused as exc:
                delay = self._throttle.record_failure(pair)
                self.note_failure(username, where, mechanism, protocol, exc.message, pair=pair)
                return _Verdict(None, exc, delay)
            self._throttle.record_success(pair)
            self.audit.event(
                AuditEvent.AUTH_SUCCESS,
                user=user.name,
                peer=where,
                protocol=protocol,
                mechanism=mechanism,
            )
            return _Verdict(user, None, 0.0)
        finally:
            self._throttle.release(attempt)
            self._pump()

    def note_failure(
        self,
        username: str,
        where: str,
        mechanism: str,
        protocol: str,
        reason: str,
        *,
        pair: tuple[str, str] | None,
    ) -> None:
        """Count, audit and (rate-limited) log a refused login; also for refusals made
        before a password check, such as an unsupported mechanism."""
        self.failures_by_mechanism[mechanism] = self.failures_by_mechanism.get(mechanism, 0) + 1
        username, user_ref = self._recorded_name(username)
        self.audit.event(
            AuditEvent.AUTH_FAILURE,
            user=username,
            user_ref=user_ref,
            peer=where,
            protocol=protocol,
            mechanism=mechanism,
            reason=reason,
        )
        log_now, left_out = (True, 0) if pair is None else self._failure_log.note(pair)
        if not log_now:
            return
        log.warning(
            "authentication of user %s from %s (%s) refused: %s%s",
            _shown(username, user_ref),
            where,
            protocol,
            reason,
            f" ({left_out} more refusals of this user from this address in the "
            f"previous {FAILURE_LOG_INTERVAL_S:.0f} s)"
            if left_out
            else "",
        )

    def _recorded_name(self, username: str) -> tuple[str, str | None]:
        """(name, ref) to record for a refused login.  A name that is no user is often a
        password typed in the wrong field: it is recorded as UNKNOWN_USER with a keyed
        digest (distinct names stay countable within a run), never as itself."""
        if username in self.users:
            return username, None
        digest = hmac.digest(self._cache_key, b"user:" + username.encode("utf-8"), "sha256")
        return UNKNOWN_USER, digest.hex()[:UNKNOWN_USER_REF_CHARS]

    def tick(self) -> None:
        """Log the counts of failures left out of the log (broker ticker, ~1/s)."""
        for (user, address), count in self._failure_log.flush():
            log.warning(
                "authentication of user %s from %s: %d more refusals in the last %.0f s",
                _shown(*self._recorded_name(user)),
                address,
                count,
                FAILURE_LOG_INTERVAL_S,
            )

    def _pump(self) -> None:
        """Start every attempt whose turn has come; wake up when a delay ends."""
        admitted, wake = self._throttle.admit()
        for attempt in admitted:
            waiter = attempt.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            else:  # gone meanwhile
                self._throttle.release(attempt)
        if admitted and any(not a.admitted for a in admitted):
            self._pump()
            return
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if wake is not None:
            loop = asyncio.get_running_loop()
            self._wake = loop.call_later(max(0.0, wake - self._clock()), self._pump)

    def close(self) -> None:
        """Stop the scrypt worker threads (call at broker shutdown)."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        for task in list(self._checks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    @property
    def tracked_failure_pairs(self) -> int:
        return self._throttle.tracked_pairs

    @property
    def waiting_logins(self) -> int:
        return self._throttle.waiting

    async def _check(self, username: str, password: str, peer_host: str) -> User:
        account = self.users.get(username)
        if account is None:
            await self._run_scrypt(burn_scrypt, password)
            raise AccessRefused(INVALID_CREDENTIALS)
        if not await self._password_matches(account, password):
            raise AccessRefused(INVALID_CREDENTIALS)
        self.check_loopback(username, peer_host)
        if account.scram is None and account.password_hash is not None:
            await self._upgrade_to_scram(account, password)
        return account.user

    def check_loopback(self, username: str, peer_host: str) -> None:
        """Raise AccessRefused for a loopback-only user from elsewhere (after its
        credentials were checked, so the message reveals nothing to a guesser)."""
        if username in self._loopback_users and not is_loopback(peer_host):
            raise AccessRefused(
                f"user {username!r} can only connect from loopback (127.0.0.1 or ::1); "
                "create another user for remote access"
            )

    async def _upgrade_to_scram(self, account: StoredUser, password: str) -> None:
        """The password just matched the scrypt hash: store its SCRAM credential too."""
        try:
            scram = await self._run_scrypt(make_scram_credential, password)
        except ValueError as exc:  # SASLprep refuses the password: PLAIN only
            log.info("user %r keeps PLAIN only: %s", account.name, exc)
            return
        if self.users.upgrade_scram(account.name, account.password_hash, scram):
            log.info(
                "user %r: stored a SCRAM-SHA-256 credential (made at its PLAIN login)",
                account.name,
            )

    def scram_credential(self, username: str) -> tuple[ScramCredential, StoredUser | None]:
        """The credential a SCRAM exchange for ``username`` uses, and the account when it
        has a real one.  A user name that is no user, or a user with no SCRAM credential
        yet, gets a stand-in that no proof matches, with a salt that is stable per name
        (RFC 5802, section 9), so the exchange does not tell them from real users."""
        account = self.users.get(username)
        if account is not None:
            if account.scram is not None:
                try:
                    return parse_scram_credential(account.scram), account
                except ValueError:
                    log.error("user %r: stored SCRAM credential is malformed", username)
            elif account.password_hash is None:  # the built-in guest password
                return self._guest_scram, account
        salt = hmac.digest(self._cache_key, b"scram-salt:" + username.encode("utf-8"), "sha256")
        stand_in = ScramCredential(
            SCRAM_ITERATIONS, salt[:SCRAM_SALT_BYTES], os.urandom(32), os.urandom(32)
        )
        return stand_in, None

    async def burn_check(self) -> None:
        """Spend what a refused password check spends (one scrypt in the pool)."""
        await self._run_scrypt(burn_scrypt, "")

    async def _password_matches(self, account: StoredUser, password: str) -> bool:
        digest = hmac.digest(self._cache_key, password.encode("utf-8"), "sha256")
        # The stored hash is part of the key: after a password change (management API)
        # the old password's cache entry can never match again.
        key = (account.user.name, account.password_hash or "", digest)
        if key in self._cache:
            self._cache.move_to_end(key)
            return True
        if account.password_hash is None:
            # The built-in guest password: pay a scrypt like any other user, so that its
            # timing does not tell it apart.
            await self._run_scrypt(burn_scrypt, password)
            matches = hmac.compare_digest(password.encode("utf-8"), DEFAULT_PASSWORD.encode())
        else:
            matches = await self._run_scrypt(verify_password, password, account.password_hash)
        if not matches:
            return False
        self._cache[key] = None
        while len(self._cache) > AUTH_CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)
        return True

    async def hash_password(self, password: str) -> str:
        """``hash_password`` in the scrypt worker pool (management API: off the loop)."""
        return await self._run_scrypt(hash_password, password)

    async def hash_credentials(self, password: str) -> tuple[str, str | None]:
        """The scrypt hash and the SCRAM-SHA-256 credential of a new password (None if
        SASLprep refuses it: that user logs in with PLAIN only)."""
        password_hash = await self._run_scrypt(hash_password, password)
        try:
            scram = await self._run_scrypt(make_scram_credential, password)
        except ValueError:
            scram = None
        return password_hash, scram

    async def _run_scrypt(self, fn: Callable[..., _T], *args: str) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(SCRYPT_WORKERS, thread_name_prefix="wharf-auth")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)


def _shown(username: str, user_ref: str | None) -> str:
    return repr(username) if user_ref is None else f"{username} ({user_ref})"


def _retrieve(task: asyncio.Task[_Verdict]) -> None:
    """A check whose caller left: its exception (broker shutdown) is no one's news."""
    if not task.cancelled():
        task.exception()
