"""What routes depend on: the services, the caller's identity, the caller's address."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request

from deepresearch.runtime.manager import owner_of
from deepresearch.services import Services


class Unauthorized(Exception):
    """No valid client key where keys are on (401)."""


async def get_services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(get_services)]


def key_of(authorization: str | None) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    return key if scheme.lower() == "bearer" and key else None


async def get_owner(svc: Svc, authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The caller's identity when client keys are on; 401 without a valid key."""
    keys = svc.settings.api_keys
    if not keys:
        return None
    key = key_of(authorization)
    if key is None or key not in keys:
        raise Unauthorized()
    return owner_of(key)


Owner = Annotated[str | None, Depends(get_owner)]


def client_of(request: Request) -> str | None:
    """A digest of the caller's address: on an open server, what tells callers apart
    for a bare citation number (never stored in the clear)."""
    if request.client is None:
        return None
    return hashlib.sha256(request.client.host.encode()).hexdigest()[:16]
