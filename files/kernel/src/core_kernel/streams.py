"""Stream names, intent encoding, idempotent publish, consumer-side reads and claims.

Blocking reads and redis-py 8: the client's default ``socket_timeout`` is 5 s, so a
``read_new(block_ms=...)`` of 5000 ms or more would time out in the client. ``read_new`` refuses
such a ``block_ms`` unless the client was built with a larger ``socket_timeout`` (or ``None``);
use ``make_client(url, socket_timeout=None)`` for a consumer that blocks long.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import redis

from core_kernel import intent as _intent
from core_kernel.intent import Intent, decode_entry_fields, parse_intent

STREAM = "quantum:stream:trade.intent"
GROUP = "quantum:group:execution:trade.intent"
RESULT_STREAM = "quantum:stream:trade.result"
DEAD_LETTER_STREAM = "quantum:stream:trade.intent.dlq"
DEDUP_TTL_SECONDS = 86400
INTENT_DEDUP_PREFIX = "dedup:trade_intent:"
ORDER_DEDUP_PREFIX = "dedup:order:"
DEFAULT_PREFIX = "quantum:"

# \Z, not $: "$" also matches before a trailing newline, which Binance refuses (-4015).
CLIENT_ORDER_ID_RE = re.compile(rf"^{_intent.CLIENT_ORDER_ID_PATTERN}\Z")


def load_lua(name: str) -> str:
    return resources.files("core_kernel").joinpath("lua", name).read_text(encoding="utf-8")


def make_client(url: str, *, socket_timeout: float | None = 5.0, **kwargs: Any) -> redis.Redis:
    """A decoded client; pass ``socket_timeout=None`` (or > block time) for long blocking reads."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout, **kwargs)


def _s(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


# --- keys ---------------------------------------------------------------------------------------
def intent_dedup_key(trace_id: str, key_prefix: str = DEFAULT_PREFIX) -> str:
    return f"{key_prefix}{INTENT_DEDUP_PREFIX}{trace_id}"


def order_dedup_key(trace_id: str, key_prefix: str = DEFAULT_PREFIX) -> str:
    return f"{key_prefix}{ORDER_DEDUP_PREFIX}{trace_id}"


# --- encoding -----------------------------------------------------------------------------------
def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest repr: the number as written
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def encode_intent(intent: Intent) -> dict[str, str]:
    """Stream fields for a validated intent (see ``intent.encode_intent``): exact text."""
    return _intent.encode_intent(intent)


def decode_intent(fields: Mapping[Any, Any]) -> Intent:
    """An Intent from stream fields (bytes, or str); raises ``IntentError`` naming each field."""
    return decode_entry_fields(fields)


# --- client order id ----------------------------------------------------------------------------
client_order_id = _intent.client_order_id


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
    fields = encode_intent(intent)
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


# --- consumer side ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamEntry:
    id: str
    fields: dict[str, str]

    def intent(self) -> Intent:
        return decode_intent(self.fields)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    next_cursor: str
    entries: list[StreamEntry]
    deleted_ids: list[str]


def _entries(raw: Any) -> list[StreamEntry]:
    out: list[StreamEntry] = []
    for item in raw or []:
        entry_id, fields = item[0], item[1]
        if fields is None:  # entry deleted from the stream while pending (XREADGROUP id 0)
            out.append(StreamEntry(_s(entry_id), {}))
            continue
        if isinstance(fields, Mapping):
            decoded = {_s(k): _s(v) for k, v in fields.items()}
        else:
            it = iter(fields)
            decoded = {_s(k): _s(v) for k, v in zip(it, it, strict=True)}
        out.append(StreamEntry(_s(entry_id), decoded))
    return out


def _is_entry(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (str, bytes))


def _read_reply(reply: Any) -> list[StreamEntry]:
    # RESP2: [[stream, [entry, ...]]]; RESP3 (redis-py 8): {stream: [[entry, ...]]}.
    if not reply:
        return []
    groups = list(reply.values()) if isinstance(reply, Mapping) else [v[1] for v in reply]
    out: list[StreamEntry] = []
    for value in groups:
        if value and not _is_entry(value[0]):
            for sub in value:
                out.extend(_entries(sub))
        else:
            out.extend(_entries(value))
    return out


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


def read_own_pending(
    client: redis.Redis,
    consumer: str,
    *,
    count: int = 100,
    start_id: str = "0",
    stream: str = STREAM,
    group: str = GROUP,
) -> list[StreamEntry]:
    """Entries already delivered to ``consumer`` and not acked (its PEL), from ``start_id`` on.

    Call at start-up and page with ``start_id`` = last id seen until it returns []. An entry
    deleted from the stream comes back with empty ``fields``.
    """
    reply = client.xreadgroup(group, consumer, {stream: start_id}, count=count)
    return _read_reply(reply)


def _socket_timeout(client: redis.Redis) -> float | None:
    kwargs = client.connection_pool.connection_kwargs
    timeout = kwargs.get("socket_timeout")
    return None if timeout is None else float(timeout)


def read_new(
    client: redis.Redis,
    consumer: str,
    *,
    block_ms: int | None = 1000,
    count: int = 10,
    stream: str = STREAM,
    group: str = GROUP,
) -> list[StreamEntry]:
    """New entries (``>``) for ``consumer``, blocking up to ``block_ms`` (None: don't block)."""
    timeout = _socket_timeout(client)
    if block_ms is not None and timeout is not None and block_ms >= timeout * 1000 - 250:
        raise ValueError(
            f"block_ms={block_ms}: must stay below the client's socket_timeout "
            f"({timeout} s) minus a margin, or the read fails with a timeout"
        )
    reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    return _read_reply(reply)


def self_claim(
    client: redis.Redis,
    consumer: str,
    min_idle_ms: int,
    *,
    count: int = 100,
    start: str = "0-0",
    stream: str = STREAM,
    group: str = GROUP,
) -> ClaimResult:
    """One XAUTOCLAIM page into ``consumer``; loop with ``start=result.next_cursor`` until 0-0."""
    reply = client.xautoclaim(stream, group, consumer, min_idle_ms, start_id=start, count=count)
    cursor = _s(reply[0])
    entries = _entries(reply[1])
    deleted = [_s(x) for x in reply[2]] if len(reply) > 2 and reply[2] else []
    return ClaimResult(cursor, entries, deleted)


def ack(client: redis.Redis, *entry_ids: str, stream: str = STREAM, group: str = GROUP) -> int:
    return int(client.xack(stream, group, *entry_ids)) if entry_ids else 0


def publish_result(
    client: redis.Redis,
    result: Mapping[str, Any],
    *,
    stream: str = RESULT_STREAM,
    maxlen: int | None = 100_000,
) -> str:
    """XADD a result (values as text; None left out); approximate MAXLEN keeps it bounded."""
    fields = {str(k): _field_text(v) for k, v in result.items() if v is not None}
    entry_id = client.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    return _s(entry_id)
