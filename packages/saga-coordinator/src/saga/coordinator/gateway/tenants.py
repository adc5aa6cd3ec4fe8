"""Tenants from API keys: who a request is billed to, whose cache it may share, whose fair share.

Off by default (the local demo has no keys: every request is the ``default`` tenant). With keys
(a file of ``key tenant`` lines or JSON ``{"key": "tenant"}``, or ``SAGA_API_KEYS`` as
``key=tenant,key=tenant``) a request must carry ``Authorization: Bearer <key>``; an unknown key
is refused (HTTP 401). Each tenant gets its own ``cache_salt``, so vLLM never serves one
tenant's cached prefix to another (a shared system prompt would otherwise leak timing).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from saga.aeg.metadata import DEFAULT_TENANT
from saga.policy.errors import SagaConfigError, SagaError

__all__ = ["API_KEYS_ENV", "AuthError", "Tenants", "load_api_keys"]

API_KEYS_ENV = "SAGA_API_KEYS"


class AuthError(SagaError, PermissionError):
    """A request without a known API key while keys are required (HTTP 401)."""


def _check(keys: Mapping[str, str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, tenant in keys.items():
        if not isinstance(key, str) or not isinstance(tenant, str) or not key or not tenant:
            raise SagaConfigError(f"{where}: every API key and tenant must be a non-empty "
                                  f"string (got {key!r}: {tenant!r})")
        if any(c.isspace() for c in key):
            raise SagaConfigError(f"{where}: API key {key[:4]}... contains whitespace")
        out[key] = tenant
    if not out:
        raise SagaConfigError(f"{where} names no API key; give at least one `key tenant` line")
    return out


def load_api_keys(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The key → tenant map from ``path`` (JSON object, or ``key tenant`` lines; ``#``
    comments), else from ``$SAGA_API_KEYS``; None when neither is given (keys off)."""
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise SagaConfigError(f"cannot read the API key file {p}: {exc.strerror}") from None
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise SagaConfigError(f"{p} is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise SagaConfigError(f"{p} must hold a JSON object {{\"key\": \"tenant\"}}")
            return _check(data, str(p))
        pairs: dict[str, str] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise SagaConfigError(f"{p}:{n}: expected `key tenant`, got {len(parts)} words")
            pairs[parts[0]] = parts[1]
        return _check(pairs, str(p))
    raw = (os.environ if env is None else env).get(API_KEYS_ENV, "").strip()
    if not raw:
        return None
    pairs = {}
    for item in raw.split(","):
        key, sep, tenant = item.strip().partition("=")
        if not sep:
            raise SagaConfigError(f"${API_KEYS_ENV}: expected key=tenant pairs separated by "
                                  f"commas, got {item.strip()[:4]}...")
        pairs[key.strip()] = tenant.strip()
    return _check(pairs, f"${API_KEYS_ENV}")


@dataclass
class Tenants:
    """Authenticates requests and counts each tenant's requests and tokens."""

    keys: Mapping[str, str] | None = None
    requests: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def tenant_of(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization`` header value; ``default`` when keys are off."""
        if self.keys is None:
            return DEFAULT_TENANT
        scheme, _, key = (authorization or "").strip().partition(" ")
        tenant = self.keys.get(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise AuthError("unknown or missing API key: send `Authorization: Bearer <key>` "
                            "with a key the gateway was started with (--api-keys)")
        return tenant

    @staticmethod
    def cache_salt(tenant: str) -> str | None:
        """The tenant's ``cache_salt`` (None for the default tenant: keys off, one cache)."""
        if tenant == DEFAULT_TENANT:
            return None
        return hashlib.sha256(f"saga-tenant:{tenant}".encode()).hexdigest()[:32]

    def count(self, tenant: str, tokens: int = 0, request: bool = False) -> None:
        if request:
            self.requests[tenant] = self.requests.get(tenant, 0) + 1
        if tokens:
            self.tokens[tenant] = self.tokens.get(tenant, 0) + tokens
