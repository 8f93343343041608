"""Stream names and keys, intent encoding, the idempotent publish and the consumer group.

The consumer side (reading entries as bytes, claims, acks, dead letters) is ``consume.py``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from importlib import resources
from typing import Any

import redis

from core_kernel import intent as _intent
from core_kernel import redis_client
from core_kernel.config import KernelConfig
from core_kernel.intent import Intent, parse_intent
from core_kernel.redis_client import RedisTarget

STREAM = "quantum:stream:trade.intent"
GROUP = "quantum:group:execution:trade.intent"
RESULT_STREAM = "quantum:stream:trade.result"
DEAD_LETTER_STREAM = "quantum:stream:trade.intent.dlq"
DEDUP_TTL_SECONDS = 86400
INTENT_DEDUP_PREFIX = "dedup:trade_intent:"
ORDER_DEDUP_PREFIX = "dedup:order:"
DEFAULT_PREFIX = "quantum:"


def load_lua(name: str) -> str:
    return resources.files("core_kernel").joinpath("lua", name).read_text(encoding="utf-8")


def make_client(
    target: str | RedisTarget | KernelConfig, *, socket_timeout: float | None = 5.0, **kwargs: Any
) -> redis.Redis:
    """A decoded client (URL, or the config's URL or Sentinel master: ``redis_client``); pass
    ``socket_timeout=None`` (or > block time) for long blocking reads."""
    return redis_client.make_client(target, socket_timeout=socket_timeout, **kwargs)


def redis_down(exc: Exception) -> tuple[str, str]:
    """(log event, one-line text) for a Redis that cannot be used: a refused AUTH is not an
    outage (redis-py makes AuthenticationError a ConnectionError), and retrying cannot fix it."""
    if isinstance(exc, redis.AuthenticationError):
        return "REDIS_AUTH_FAILED", f"redis refused the credentials (auth failed): {exc}"
    return "REDIS_UNAVAILABLE", f"redis unreachable: {exc}"


def _s(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


# --- keys ---------------------------------------------------------------------------------------
def intent_dedup_key(trace_id: str, key_prefix: str = DEFAULT_PREFIX) -> str:
    return f"{key_prefix}{INTENT_DEDUP_PREFIX}{trace_id}"


def order_dedup_key(trace_id: str, key_prefix: str = DEFAULT_PREFIX) -> str:
    return f"{key_prefix}{ORDER_DEDUP_PREFIX}{trace_id}"


# --- publish ------------------------------------------------------------------------------------
class _Scripts:
    """Scripts registered per client (EVALSHA, with EVAL fallback on NOSCRIPT).

    Weakly keyed, so a client that is dropped is not kept alive by its scripts.
    """

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[redis.Redis, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, client: redis.Redis, name: str) -> Any:
        with self._lock:
            per_client = self._cache.setdefault(client, {})
            script = per_client.get(name)
            if script is None:
                script = client.register_script(load_lua(name))
                per_client[name] = script
            return script


_SCRIPTS = _Scripts()


def publish_intent_once(
    client: redis.Redis,
    intent: Intent | Mapping[str, Any],
    *,
    stream: str = STREAM,
    ttl_seconds: int = DEDUP_TTL_SECONDS,
    maxlen: int | None = None,
    key_prefix: str = DEFAULT_PREFIX,
) -> str | None:
    """XADD the intent unless its trace id was published in the last ``ttl_seconds``.

    ``SET quantum:dedup:trade_intent:{trace_id} NX EX ttl`` and the XADD run in one Lua script,
    so there is never a dedup key without its entry or the reverse. Returns the entry id, or None
    for a duplicate. A mapping goes through ``parse_intent`` first: the stream never carries an
    intent that would not parse, and the ``IntentError`` (a ValueError) is the one ``evaluate``
    reports. An intent without a trace id is refused the same way.
    """
    if not isinstance(intent, Intent):
        intent = parse_intent(intent, require_trace_id=True)
    trace_id = intent.trace_id
    if trace_id is None:
        raise _intent.IntentError(
            {"trace_id": "missing (publish_intent_once needs it for deduplication)"}
        )
    fields = _intent.encode_intent(intent)
    argv: list[str | int] = [ttl_seconds, maxlen or 0]
    for key, value in fields.items():
        argv.extend((key, value))
    script = _SCRIPTS.get(client, "publish_once.lua")
    result = script(keys=[intent_dedup_key(trace_id, key_prefix), stream], args=argv)
    return None if result is None else _s(result)


def claim_order(
    client: redis.Redis,
    trace_id: str,
    value: str = "1",
    *,
    ttl_seconds: int = DEDUP_TTL_SECONDS,
    key_prefix: str = DEFAULT_PREFIX,
) -> bool:
    """Take the order dedup key with one ``SET NX EX``; True if this caller got it.

    For the two-step (``profit_gate`` + ``record_trade``) API. ``KernelStore.admit`` writes the
    same key itself, with the decision as value, so don't call both for one trace id.
    """
    if not trace_id:
        raise ValueError("trace_id: missing")
    return bool(client.set(order_dedup_key(trace_id, key_prefix), value, nx=True, ex=ttl_seconds))


# --- consumer side (reads, claims, acks and dead letters: consume.py) ---------------------------
def ensure_group(
    client: redis.Redis, stream: str = STREAM, group: str = GROUP, start_id: str = "$"
) -> bool:
    """Create the group (MKSTREAM). True if created, False if it already existed.

    The default start id ``$`` means a group created on an existing stream does not replay the
    stream's history as new orders (fail closed); call this before the first publish.
    """
    try:
        client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True
