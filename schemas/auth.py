"""Credentials (CONTRACT.md "Auth"): HS256 JWTs carrying `tenant_id`, `scopes`, `exp`.

Verification is PyJWT's: the signature (HS256 only, so a token cannot choose `none` or
another algorithm), `exp` required and checked. A credential that fails any check is
refused with a reason fit to show the caller, never with the token's contents.
"""

import re
from collections.abc import Mapping
from typing import Literal, NamedTuple

import jwt

# `gateway`: every tenant's batches from `GET /api/v1/batches`, and nothing else (what a
# stream gateway needs to catch its clients up; it mints its own from the shared secret).
Scope = Literal["read", "write", "admin", "gateway"]
SCOPES: frozenset[str] = frozenset(("read", "write", "admin", "gateway"))
_TENANT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TOKEN_CHARS = 4096


class Principal(NamedTuple):
    """Who is asking: one tenant, some scopes."""

    tenant_id: str
    scopes: frozenset[str]

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes


class AuthError(Exception):
    """A request refused: 401 (no or bad credential) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def verify(token: str, secret: str) -> Principal:
    """The principal of a valid token; raises AuthError(401, why) for any other."""
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError(401, "token is too long")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "tenant_id", "scopes"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "token has expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError(401, "token signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(401, f"token has no {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(401, "token is not signed with HS256") from None
    except jwt.DecodeError:
        raise AuthError(401, "token is malformed") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, f"token is invalid: {exc}") from None
    tenant, scopes = claims["tenant_id"], claims["scopes"]
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise AuthError(401, "token's tenant_id is not a valid tenant id")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise AuthError(401, "token's scopes must be a list of strings")
    return Principal(tenant, frozenset(scopes) & SCOPES)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <jwt>` header, if there is one."""
    value = headers.get("authorization")
    if value is None:
        return None
    kind, _, token = value.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise AuthError(401, "Authorization header must be 'Bearer <token>'")
    return token.strip()


def issue(secret: str, tenant_id: str, scopes: list[str], expires_at: int) -> str:
    """A token for `tenant_id` (for operators' scripts and the tests)."""
    claims = {"tenant_id": tenant_id, "scopes": scopes, "exp": expires_at}
    return jwt.encode(claims, secret, algorithm="HS256")
