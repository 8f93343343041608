"""The order lease: a fence around the send of one client order id.

The holder is a random token made once per process (never the consumer name: two processes may
share a consumer name on cloned hosts). The lease is taken before the exchange lookup and
renewed by ``renew`` - compare-token, check the remaining TTL, PEXPIRE, in one script - right
before every send attempt. Renewal fails once the lease expired or changed hands, or when less
than ``min_remaining_ms`` (recvWindow + margin) is left, so a holder that slept through a long
``Retry-After`` or a slow send never sends again. After a send the lease still covers the
request's recvWindow, so no other process can look up and send while it may execute.
"""

from __future__ import annotations

import enum
import secrets

import redis

from core_kernel.streams import _SCRIPTS

LEASE_PREFIX = "quantum:kernel:order_lease:"


class Taken(enum.Enum):
    FRESH = 1  # nobody held it: a previous holder (if any) is gone
    OURS = 2  # this process already held it
    BUSY = 0  # another process holds it


class OrderLease:
    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_ms: int,
        min_remaining_ms: int,
        token: str | None = None,
        prefix: str = LEASE_PREFIX,
    ) -> None:
        if ttl_ms <= min_remaining_ms:
            raise ValueError(f"ttl_ms={ttl_ms}: must exceed min_remaining_ms={min_remaining_ms}")
        self.redis = client
        self.ttl_ms = ttl_ms
        self.min_remaining_ms = min_remaining_ms
        self.token = token or secrets.token_hex(16)
        self.prefix = prefix

    def key(self, client_order_id: str) -> str:
        return self.prefix + client_order_id

    def acquire(self, client_order_id: str) -> Taken:
        script = _SCRIPTS.get(self.redis, "lease_acquire.lua")
        reply = int(script(keys=[self.key(client_order_id)], args=[self.token, self.ttl_ms]))
        return Taken(reply)

    def renew(self, client_order_id: str) -> bool:
        script = _SCRIPTS.get(self.redis, "lease_renew.lua")
        args = [self.token, self.ttl_ms, self.min_remaining_ms]
        return int(script(keys=[self.key(client_order_id)], args=args)) == 1

    def release(self, client_order_id: str) -> bool:
        script = _SCRIPTS.get(self.redis, "lease_release.lua")
        return int(script(keys=[self.key(client_order_id)], args=[self.token])) == 1

    def holder(self, client_order_id: str) -> str | None:
        value = self.redis.get(self.key(client_order_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
