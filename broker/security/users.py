"""The runtime user store: configured users plus changes made through the management API.

Where users come from, lowest precedence first:

1. the built-in ``guest``/``guest`` user (administrator; unless ``default_user_enabled``
   is false or ``[[users]]`` defines a user named guest);
2. ``[[users]]`` in the TOML config file;
3. runtime changes (``PUT``/``DELETE /api/users/NAME``, ``wharf ctl users ...``), kept in
   ``definitions.json`` under ``"users"`` and applied at start after the config.

A runtime change to a user overrides that user's config entry for good: editing the TOML
entry of a user that was changed or deleted at runtime has no effect until the runtime
record is replaced (another PUT).  Users never touched at runtime follow the config file.

Records in the definitions document (one per user changed at runtime)::

    {"name": "app", "password_hash": "scrypt$...", "tags": ["administrator"],
     "scram_sha_256": "SCRAM-SHA-256$4096$..."}
    {"name": "old", "deleted": true}          # a config user deleted at runtime

``password_hash`` may be null only for ``guest``: the built-in guest password.
``scram_sha_256`` (passwords.py) is absent in records written before Wharf had SCRAM; such
a user gets it at its next PLAIN login (``UserStore.upgrade_scram``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from .identity import DEFAULT_USER, User
from .passwords import parse_password_hash, parse_scram_credential

log = logging.getLogger(__name__)

# Bounds so that the API cannot grow the store (and definitions.json) without limit.
MAX_USERS: Final = 10_000
MAX_USER_NAME_CHARS: Final = 255
MAX_TAGS_PER_USER: Final = 32
MAX_TAG_CHARS: Final = 64
MAX_PASSWORD_CHARS: Final = 1_024
ADMINISTRATOR_TAG: Final = "administrator"
# Also published in the OpenAPI document (api.py), so both say the same thing.  A user name
# cannot contain ':' (HTTP basic credentials split at the first one); a tag cannot contain
# ',' (the "a,b" form); neither may contain control characters.
USER_NAME_PATTERN: Final = r"^[^:\u0000-\u001f\u007f]+$"
TAG_PATTERN: Final = r"^[^,\u0000-\u001f\u007f]+$"
_B64: Final = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
# scrypt$<n: a power of two 2..2**20>$<r: 1..32>$<p: 1..16>$<salt>$<key>, as passwords.py checks.
PASSWORD_HASH_PATTERN: Final = (
    r"^scrypt\$(?:"
    + "|".join(str(2**i) for i in range(20, 0, -1))
    + r")\$(?:3[0-2]|[12][0-9]|[1-9])\$(?:1[0-6]|[1-9])\$"
    + _B64
    + r"\$"
    + _B64
    + "$"
)
_USER_NAME_RE: Final = re.compile(USER_NAME_PATTERN)
_TAG_RE: Final = re.compile(TAG_PATTERN)
_PASSWORD_HASH_RE: Final = re.compile(PASSWORD_HASH_PATTERN)

SOURCE_BUILTIN: Final = "builtin"
SOURCE_CONFIG: Final = "config"
SOURCE_RUNTIME: Final = "runtime"


class UserError(ValueError):
    """A user name, tag or password hash is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class StoredUser:
    user: User
    password_hash: str | None  # None: the built-in guest password, compared in constant time
    source: str = SOURCE_CONFIG
    # The SCRAM-SHA-256 credential of the same password (passwords.py), None until known.
    scram: str | None = None

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def tags(self) -> tuple[str, ...]:
        return self.user.tags

    @property
    def is_administrator(self) -> bool:
        return ADMINISTRATOR_TAG in self.user.tags


def check_user_name(name: str) -> None:
    if len(name) > MAX_USER_NAME_CHARS or not _USER_NAME_RE.fullmatch(name):
        raise UserError(
            f"user name must be 1..{MAX_USER_NAME_CHARS} characters without ':' "
            "or control characters"
        )


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for tag in tags:
        if len(tag) > MAX_TAG_CHARS or not _TAG_RE.fullmatch(tag):
            raise UserError(
                f"tags must be 1..{MAX_TAG_CHARS} characters without ',' or control characters"
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS_PER_USER:
        raise UserError(f"at most {MAX_TAGS_PER_USER} tags per user")
    return tuple(out)


def check_scram_credential(scram: str) -> None:
    try:
        parse_scram_credential(scram)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_password_hash(password_hash: str) -> None:
    if not _PASSWORD_HASH_RE.fullmatch(password_hash):
        raise UserError(
            "password hash must look like scrypt$<n>$<r>$<p>$<salt b64>$<hash b64> "
            "(create one with `wharf hash-password`)"
        )
    try:
        parse_password_hash(password_hash)
    except ValueError as exc:
        raise UserError(str(exc)) from None


class UserStore:
    """Effective users by name.  ``on_change`` (set by the broker) persists runtime records."""

    __slots__ = ("_base", "_overrides", "_users", "on_change")

    def __init__(self, initial: Iterable[StoredUser]) -> None:
        self._base: dict[str, StoredUser] = {u.name: u for u in initial}
        # name -> runtime record, None = deleted at runtime.
        self._overrides: dict[str, StoredUser | None] = {}
        self._users: dict[str, StoredUser] = dict(self._base)
        self.on_change: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, name: object) -> bool:
        return name in self._users

    def get(self, name: str) -> StoredUser | None:
        return self._users.get(name)

    def all(self) -> list[StoredUser]:
        return sorted(self._users.values(), key=lambda u: u.name)

    def configured(self, name: str) -> bool:
        """``name`` is the built-in guest or a config-file user (changed at runtime or not)."""
        return name in self._base

    def administrators(self) -> list[str]:
        return [u.name for u in self._users.values() if u.is_administrator]

    # -- changes -----------------------------------------------------------------------

    def put(
        self,
        name: str,
        password_hash: str | None,
        tags: Iterable[str],
        scram: str | None = None,
    ) -> bool:
        """Create or replace a user; True if it is new.  ``password_hash`` None keeps the
        current password (and its SCRAM credential) of an existing user (a new user needs
        one); a new password comes with its ``scram`` credential, or gets one at the
        user's next PLAIN login."""
        check_user_name(name)
        clean_tags = check_tags(tags)
        existing = self._users.get(name)
        if password_hash is None:
            if existing is None:
                raise UserError(f"user {name!r} does not exist: give a password")
            password_hash = existing.password_hash
            scram = existing.scram
        else:
            check_password_hash(password_hash)
            if scram is not None:
                check_scram_credential(scram)
        if existing is None and len(self._users) >= MAX_USERS:
            raise UserError(f"user limit {MAX_USERS} reached")
        record = StoredUser(User(name, clean_tags), password_hash, SOURCE_RUNTIME, scram)
        self._overrides[name] = record
        self._users[name] = record
        self._changed()
        return existing is None

    def upgrade_scram(self, name: str, password_hash: str | None, scram: str) -> bool:
        """Give ``name`` the SCRAM credential made from the password that just logged in
        with PLAIN, if its password is still ``password_hash`` and it has none yet.

        A runtime user's record is saved (``on_change``).  A config-file user's is kept in
        memory only: writing a runtime record for it would override its TOML entry for
        good (see above), so it is upgraded again after each restart, or for good by a
        ``scram_sha_256`` key in its entry.  Returns True if something changed.
        """
        current = self._users.get(name)
        if current is None or current.scram is not None or current.password_hash != password_hash:
            return False
        check_scram_credential(scram)
        upgraded = dataclasses.replace(current, scram=scram)
        self._users[name] = upgraded
        if current.source == SOURCE_RUNTIME:
            self._overrides[name] = upgraded
            self._changed()
        elif self._base.get(name) is current:
            self._base[name] = upgraded
        return True

    def delete(self, name: str) -> bool:
        """Remove a user; False if there was none."""
        if name not in self._users:
            return False
        del self._users[name]
        if name in self._base:
            self._overrides[name] = None  # a tombstone hides the config entry
        else:
            self._overrides.pop(name, None)
        self._changed()
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- persistence ---------------------------------------------------------------------

    def runtime_records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, record in sorted(self._overrides.items()):
            if record is None:
                out.append({"name": name, "deleted": True})
            else:
                entry: dict[str, Any] = {
                    "name": name,
                    "password_hash": record.password_hash,
                    "tags": list(record.tags),
                }
                if record.scram is not None:
                    entry["scram_sha_256"] = record.scram
                out.append(entry)
        return out

    def load_runtime(self, records: Any) -> None:
        """Apply the records saved by ``runtime_records`` (at start, before clients).

        A malformed record is logged and skipped: one bad entry must not keep the broker
        (and every other user) from starting.
        """
        if not isinstance(records, list):
            if records is not None:
                log.error("definitions: 'users' is not a list; ignoring runtime users")
            return
        for i, rec in enumerate(records):
            try:
                name, record = self._parse_record(rec)
            except UserError as exc:
                log.error("definitions: users[%d] ignored: %s", i, exc)
                continue
            self._overrides[name] = record
            if record is None:
                self._users.pop(name, None)
            else:
                self._users[name] = record

    @staticmethod
    def _parse_record(rec: Any) -> tuple[str, StoredUser | None]:
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise UserError("expected an object with a string 'name'")
        name: str = rec["name"]
        check_user_name(name)
        if rec.get("deleted") is True:
            return name, None
        password_hash = rec.get("password_hash")
        if password_hash is None:
            if name != DEFAULT_USER:
                raise UserError(f"user {name!r} has no password_hash")
        elif isinstance(password_hash, str):
            check_password_hash(password_hash)
        else:
            raise UserError(f"user {name!r}: password_hash must be a string")
        tags = rec.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise UserError(f"user {name!r}: tags must be a list of strings")
        scram = rec.get("scram_sha_256")  # absent in records older than SCRAM
        if scram is not None:
            if not isinstance(scram, str):
                raise UserError(f"user {name!r}: scram_sha_256 must be a string")
            check_scram_credential(scram)
        user = User(name, check_tags(tags))
        return name, StoredUser(user, password_hash, SOURCE_RUNTIME, scram)
