"""Tenants and their API keys. Keys are stored as sha256 hashes; the plaintext is shown once.

sha256 (not a slow password hash) is right here: keys are 256 random bits, so there is nothing to
brute-force, and lookups must be one indexed equality per request.
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store._sql import rowcount
from store.ids import new_id
from store.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "lth_"
_DISPLAY_PREFIX_LENGTH = 12


def hash_key(plaintext: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def get_tenant(session: Session, tenant_id: str) -> Tenant | None:
    """The tenant with this id, if any."""
    return session.get(Tenant, tenant_id)


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    """The tenant with this name, if any."""
    return session.scalars(sa.select(Tenant).where(Tenant.name == name)).one_or_none()


def ensure_tenant(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, created if missing (safe against a concurrent creator)."""
    tenant = get_tenant_by_name(session, name)
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            tenant = Tenant(id=new_id("ten"), name=name, created_at=utcnow())
            session.add(tenant)
    except IntegrityError:
        tenant = get_tenant_by_name(session, name)
        if tenant is None:  # pragma: no cover - the conflicting row must exist
            raise
    return tenant


def create_api_key(session: Session, tenant_name: str) -> str:
    """A new key for ``tenant_name`` (created if missing). Returns the plaintext: show it once."""
    tenant = ensure_tenant(session, tenant_name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=new_id("key"),
            tenant_id=tenant.id,
            key_hash=hash_key(plaintext),
            prefix=plaintext[:_DISPLAY_PREFIX_LENGTH],
            created_at=utcnow(),
        )
    )
    session.flush()
    return plaintext


def tenant_for_api_key(session: Session, plaintext: str) -> Tenant | None:
    """The tenant a valid, unrevoked key belongs to; None for anything else."""
    query = (
        sa.select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(plaintext), ApiKey.revoked_at.is_(None))
    )
    return session.scalars(query).one_or_none()


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    """A tenant's keys (hashes and display prefixes only), oldest first."""
    query = sa.select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    return list(session.scalars(query))


def revoke_api_key(session: Session, plaintext: str) -> bool:
    """Revoke a key; False when it is unknown or already revoked."""
    result = session.execute(
        sa.update(ApiKey)
        .where(ApiKey.key_hash == hash_key(plaintext), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return rowcount(result) == 1
