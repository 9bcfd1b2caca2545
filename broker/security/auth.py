"""The broker's PLAIN authenticator (password hashes: passwords.py).

Authentication rules:

* The built-in ``guest`` user (password ``guest``) exists unless ``default_user_enabled``
  is false or a configured ``[[users]]`` entry named guest replaces it.
* Users live in a ``users.UserStore`` (``Authenticator.users``): the configured ones plus
  runtime changes made through the management API, which override them (see users.py).
* Users listed in ``loopback_users`` may only connect from 127.0.0.0/8 or ::1
  (IPv4-mapped ::ffff:127.x counts as loopback).  Checked after the password, so the
  message reveals nothing to someone who does not know it.
* scrypt costs ~50-100 ms of CPU and 16 MiB per check, so it runs in a small dedicated
  thread pool (bounded memory) instead of on the event loop.
* Repeated failures from one peer host are slowed down (see ``failure_delay_s``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from wharf.protocol.errors import AccessRefused

from .passwords import burn_scrypt, hash_password, parse_password_hash, verify_password

if TYPE_CHECKING:
    from ..config import Settings
    from .users import StoredUser

log = logging.getLogger(__name__)

# Concurrent scrypt checks; each holds 128 * r * n bytes (16 MiB at the defaults).
SCRYPT_WORKERS: Final = 4

DEFAULT_USER: Final = "guest"
DEFAULT_PASSWORD: Final = "guest"
DEFAULT_USER_TAGS: Final = ("administrator",)

# Successful (user, password digest) pairs remembered so that a reconnect storm (a broker
# restart or a network blip makes thousands of clients log in at once) costs one scrypt
# per distinct credential instead of one per connection.  Only successes are cached, so
# guessing passwords still pays a full scrypt per attempt.  The digest is an HMAC-SHA256
# under a per-process random key: a memory dump does not yield a fast unsalted hash.
AUTH_CACHE_MAX_ENTRIES: Final = 1_024

# Failure slowdown: after the k-th recent failure from a host, that host's next result is
# delayed by min(FAILURE_DELAY_BASE_S * 2**(k-1), FAILURE_DELAY_MAX_S).  A host's count is
# forgotten after FAILURE_DECAY_S without a failure.  At most MAX_FAILURE_HOSTS hosts are
# tracked; the one whose last failure is oldest is evicted first.
FAILURE_DELAY_BASE_S: Final = 0.1
FAILURE_DELAY_MAX_S: Final = 5.0
FAILURE_DECAY_S: Final = 60.0
MAX_FAILURE_HOSTS: Final = 10_000

INVALID_CREDENTIALS: Final = "invalid credentials"

_T = TypeVar("_T")


def failure_delay_s(failures: int) -> float:
    """Delay before the next result for a host with ``failures`` recent failures."""
    if failures <= 0:
        return 0.0
    # Cap the exponent: 2**(huge) would be a pointlessly large float.
    return min(FAILURE_DELAY_BASE_S * (1 << min(failures - 1, 32)), FAILURE_DELAY_MAX_S)


def is_loopback(peer_host: str) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x are loopback; anything unparsable is not."""
    try:
        addr = ipaddress.ip_address(peer_host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _host_key(peer_host: str) -> str:
    """Normalise so that ::ffff:10.0.0.1 and 10.0.0.1 share one failure record."""
    try:
        addr = ipaddress.ip_address(peer_host)
    except ValueError:
        return peer_host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class _Failures:
    count: int
    last_failure: float


class Authenticator:
    """Checks PLAIN credentials against the configured users; one per broker."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # Runtime user store (management API): users.py imports this module, hence here.
        from .users import SOURCE_BUILTIN, SOURCE_CONFIG, StoredUser, UserStore

        initial: dict[str, StoredUser] = {}
        for cfg in settings.users:
            try:
                parse_password_hash(cfg.password_hash)
            except ValueError as exc:
                from ..config import ConfigError  # config imports this module

                raise ConfigError(f"users: {cfg.name!r}: {exc}") from None
            initial[cfg.name] = StoredUser(
                User(cfg.name, tuple(cfg.tags)), cfg.password_hash, SOURCE_CONFIG
            )
        if settings.default_user_enabled and DEFAULT_USER not in initial:
            initial[DEFAULT_USER] = StoredUser(
                User(DEFAULT_USER, DEFAULT_USER_TAGS), None, SOURCE_BUILTIN
            )
        # Effective users: config + runtime changes; the broker loads and persists these.
        self.users = UserStore(initial.values())
        self._loopback_users = frozenset(settings.loopback_users)
        self._clock = clock
        self._sleep = sleep
        self._cache_key = os.urandom(32)
        self._cache: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None

    async def authenticate(self, username: str, password: str, peer_host: str) -> User:
        """Return the user or raise AccessRefused; slowed down after recent failures."""
        host = _host_key(peer_host)
        delay = failure_delay_s(self._recent_failures(host))
        try:
            user = await self._check(username, password, peer_host)
        except AccessRefused as exc:
            count = self._record_failure(host)
            log.warning(
                "authentication of user %r from %s refused: %s (%d recent failures from host)",
                username,
                peer_host,
                exc.message,
                count,
            )
            if delay > 0:
                await self._sleep(delay)
            raise
        if delay > 0:
            await self._sleep(delay)
        return user

    def close(self) -> None:
        """Stop the scrypt worker threads (call at broker shutdown)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    @property
    def tracked_failure_hosts(self) -> int:
        return len(self._failures)

    async def _check(self, username: str, password: str, peer_host: str) -> User:
        account = self.users.get(username)
        if account is None:
            await self._run_scrypt(burn_scrypt, password)
            raise AccessRefused(INVALID_CREDENTIALS)
        if not await self._password_matches(account, password):
            raise AccessRefused(INVALID_CREDENTIALS)
        if username in self._loopback_users and not is_loopback(peer_host):
            raise AccessRefused(
                f"user {username!r} can only connect from loopback (127.0.0.1 or ::1); "
                "create another user for remote access"
            )
        return account.user

    async def _password_matches(self, account: StoredUser, password: str) -> bool:
        if account.password_hash is None:
            return hmac.compare_digest(password.encode("utf-8"), DEFAULT_PASSWORD.encode())
        digest = hmac.digest(self._cache_key, password.encode("utf-8"), "sha256")
        # The stored hash is part of the key: after a password change (management API)
        # the old password's cache entry can never match again.
        key = (account.user.name, account.password_hash, digest)
        if key in self._cache:
            self._cache.move_to_end(key)
            return True
        if not await self._run_scrypt(verify_password, password, account.password_hash):
            return False
        self._cache[key] = None
        while len(self._cache) > AUTH_CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)
        return True

    async def hash_password(self, password: str) -> str:
        """``hash_password`` in the scrypt worker pool (management API: off the loop)."""
        return await self._run_scrypt(hash_password, password)

    async def _run_scrypt(self, fn: Callable[..., _T], *args: str) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(SCRYPT_WORKERS, thread_name_prefix="wharf-auth")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _recent_failures(self, host: str) -> int:
        record = self._failures.get(host)
        if record is None:
            return 0
        if self._clock() - record.last_failure >= FAILURE_DECAY_S:
            del self._failures[host]
            return 0
        return record.count

    def _record_failure(self, host: str) -> int:
        now = self._clock()
        record = self._failures.pop(host, None)
        if record is None or now - record.last_failure >= FAILURE_DECAY_S:
            record = _Failures(0, now)
        record.count += 1
        record.last_failure = now
        self._failures[host] = record  # re-inserted last: the map is ordered by last failure
        while len(self._failures) > MAX_FAILURE_HOSTS:
            self._failures.popitem(last=False)
        return record.count
