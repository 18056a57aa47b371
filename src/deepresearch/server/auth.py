"""Client keys: who is calling, with which role, compared in constant time.

Keys come from ``DEEPRESEARCH_API_KEYS`` (each a ``user`` key) and from a TOML
file named by ``DEEPRESEARCH_KEYS_FILE``, which names each key and gives it a
role::

    [[keys]]
    name = "alice"
    role = "user"        # or "admin"
    key = "a-long-random-string"
    # or, so the file holds no secret: sha256 = "<hex SHA-256 of the key>"

A ``user`` sees, resumes and cancels only the sessions it started; an ``admin``
sees every session, the backends' details in ``/health``, and ``/metrics``.
With no keys at all the server is a local, single-user one: the caller is
``anonymous`` with the admin's view (the Host allowlist keeps other web pages out).

A presented key is hashed and compared with every known key's hash by
``hmac.compare_digest``, all of them every time, so neither the comparison nor
the loop ends early on a partial match.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from deepresearch.errors import ClientError, ConfigurationError

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")


class Forbidden(ClientError):
    status_code = 403


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    name: str
    role: Role
    owner: str | None  # stored on the sessions it starts; None when keys are off

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """Whose sessions this caller may see: its own, or (``None``) everyone's."""
        return None if self.is_admin else self.owner


ANONYMOUS = Principal("anonymous", "admin", None)


@dataclass(frozen=True)
class _Key:
    name: str
    role: Role
    digest: bytes  # SHA-256 of the key


def owner_id(digest: bytes) -> str:
    """Who owns a session: a prefix of the key's digest, never the key itself (the
    same value ``runtime.manager.owner_of`` gives, so older records keep their owner)."""
    return digest.hex()[:16]


class KeyRing:
    def __init__(self, keys: list[_Key]) -> None:
        self._keys = keys
        digests = [key.digest for key in keys]
        if len(set(digests)) != len(digests):
            raise ConfigurationError(
                "DEEPRESEARCH_KEYS_FILE / DEEPRESEARCH_API_KEYS: the same key is listed twice"
            )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str) -> Principal | None:
        """The principal ``presented`` belongs to, or ``None``; constant time in the key."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: _Key | None = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest) and found is None:
                found = key
        if found is None:
            return None
        return Principal(found.name, found.role, owner_id(found.digest))


def load_keyring(api_keys: list[str], keys_file: Path | None) -> KeyRing:
    """The keys from the variable (role ``user``) and the file; a bad file stops start-up
    with one line naming the setting."""
    keys: list[_Key] = []
    for raw in api_keys:
        digest = hashlib.sha256(raw.encode()).digest()
        keys.append(_Key(f"key-{owner_id(digest)[:8]}", "user", digest))
    if keys_file is not None:
        keys.extend(_read_keys_file(keys_file))
    return KeyRing(keys)


def _read_keys_file(path: Path) -> list[_Key]:
    where = f"DEEPRESEARCH_KEYS_FILE ({path})"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{where}: not valid TOML: {exc}") from exc
    entries = data.get("keys", [])
    if not isinstance(entries, list):
        raise ConfigurationError(f"{where}: expected [[keys]] tables")
    keys: list[_Key] = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{where}: key {number} is not a table")
        name, role = entry.get("name"), entry.get("role", "user")
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"{where}: key {number} needs a name")
        if role not in ROLES:
            raise ConfigurationError(f"{where}: key {name!r}: role must be 'user' or 'admin'")
        secret, hashed = entry.get("key"), entry.get("sha256")
        if isinstance(secret, str) and len(secret) >= 8 and hashed is None:
            digest = hashlib.sha256(secret.encode()).digest()
        elif isinstance(hashed, str) and secret is None:
            try:
                digest = bytes.fromhex(hashed)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigurationError(f"{where}: key {name!r}: sha256 must be 64 hex digits")
        else:
            raise ConfigurationError(
                f"{where}: key {name!r} needs either key (8 characters or more) or sha256"
            )
        keys.append(_Key(name.strip(), cast(Role, role), digest))
    return keys
