"""What routes depend on: the services, the caller (key and role), the caller's address."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request

from deepresearch.runtime.ids import IdSpace
from deepresearch.server.auth import ANONYMOUS, KeyRing, Principal
from deepresearch.server.limits import RateLimiter
from deepresearch.services import Services


class Unauthorized(Exception):
    """No valid client key where keys are on (401)."""


async def get_services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(get_services)]


def identify(request: Request, authorization: str | None) -> Principal | None:
    """The caller named by ``authorization``: ``ANONYMOUS`` with keys off, ``None``
    for a missing or unknown key."""
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled:
        return ANONYMOUS
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return keyring.identify(key.strip())


async def get_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The caller; 401 without a valid key when keys are on, 429 past its rate."""
    caller = identify(request, authorization)
    if caller is None:
        raise Unauthorized()
    if caller.owner is not None:
        limiter: RateLimiter = request.app.state.rate_limiter
        limiter.take(caller.name)
    return caller


Caller = Annotated[Principal, Depends(get_caller)]


async def get_owner(caller: Caller) -> str | None:
    """Whose sessions the caller may see: its own, or everyone's (``None``: an admin,
    or keys off). Sessions the caller starts are owned by ``caller.owner``."""
    return caller.scope


Owner = Annotated[str | None, Depends(get_owner)]


async def get_ids(request: Request, caller: Caller) -> IdSpace:
    """How the caller names sessions (``runtime/ids.py``): a ``user`` key its own
    chosen ids, an admin (or anyone, keys off) the store's."""
    ids = IdSpace(caller.scope)
    request.state.ids = ids  # error answers name sessions as this caller knows them
    return ids


Ids = Annotated[IdSpace, Depends(get_ids)]


def client_of(request: Request) -> str | None:
    """A digest of the caller's address: on an open server, what tells callers apart
    for a bare citation number (never stored in the clear)."""
    if request.client is None:
        return None
    return hashlib.sha256(request.client.host.encode()).hexdigest()[:16]
