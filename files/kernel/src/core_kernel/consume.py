"""The worker's side of the intent stream: entries read as bytes, delivery counts kept honest.

* Entries are read with a client that does not decode (``raw_client``): a non-UTF-8 byte in one
  entry is that entry's problem (``intent.decode_entry_fields`` names the field), never an
  exception for the whole reply and its neighbours.
* On Redis 7.0 ``XREADGROUP ... 0`` (re-reading the own PEL) increments every entry's delivery
  counter, so a worker that re-reads its PEL while it waits for an order's status would push a
  healthy entry towards MAX_DELIVERIES. ``read_own_pending`` therefore reads the PEL with
  XPENDING (counts, no side effect), touches the entries with ``XCLAIM ... JUSTID`` (idle time
  reset, counter unchanged, so no one else claims an entry its owner is working on) and fetches
  their fields with XRANGE. A delivery is counted only when it is one: the first ``>`` read, a
  claim from a stalled consumer (XAUTOCLAIM) and the first read after a restart
  (``count_delivery=True``: the previous process died holding the entry).
* ``dead_letter`` XACKs the entry and XADDs it with its reason to the dead-letter stream in one
  script: never one without the other, and never twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from core_kernel.redis_client import with_decoding
from core_kernel.streams import _SCRIPTS, DEAD_LETTER_STREAM, GROUP, STREAM

# PASS entries whose order status is not settled: entry id -> JSON record (the worker writes
# it, the sweep never dead-letters what it holds, an operator lists it with HGETALL).
ORDER_UNKNOWN_KEY = "quantum:kernel:order_unknown"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry; ``fields`` None when it was deleted from the stream while pending."""

    id: str
    fields: dict[bytes, bytes] | None
    deliveries: int


def raw_client(client: redis.Redis) -> redis.Redis:
    """A client on the same server (or Sentinel master) and settings as ``client`` that returns
    bytes."""
    return with_decoding(client, decode_responses=False)


def _id(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[bytes, bytes] | None:
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        return {_b(k): _b(v) for k, v in raw.items()}
    it = iter(raw)
    return {_b(k): _b(v) for k, v in zip(it, it, strict=True)}


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _stream_items(reply: Any) -> list[tuple[Any, Any]]:
    # RESP2: [[stream, [entry, ...]]]; RESP3: {stream: [[entry, ...]]} (redis-py 8 default).
    if not reply:
        return []
    groups = list(reply.values()) if isinstance(reply, Mapping) else [v[1] for v in reply]
    out: list[tuple[Any, Any]] = []
    for value in groups:
        if (
            value
            and isinstance(value[0], (list, tuple))
            and value[0]
            and not isinstance(value[0][0], (bytes, str))
        ):
            for sub in value:
                out.extend((item[0], item[1]) for item in sub)
        else:
            out.extend((item[0], item[1]) for item in value or [])
    return out


def read_new(
    raw: redis.Redis,
    consumer: str,
    *,
    block_ms: int | None,
    count: int,
    stream: str = STREAM,
    group: str = GROUP,
) -> list[StreamEntry]:
    """New entries (``>``): their first delivery.

    ``block_ms`` must stay below the client's ``socket_timeout`` (redis-py 8 defaults to 5 s),
    or the blocking read fails with a client timeout instead of returning []: refused here.
    """
    timeout = raw.connection_pool.connection_kwargs.get("socket_timeout")
    if block_ms is not None and timeout is not None and block_ms >= float(timeout) * 1000 - 250:
        raise ValueError(
            f"block_ms={block_ms}: must stay below the client's socket_timeout "
            f"({timeout} s) minus a margin, or the read fails with a timeout"
        )
    reply = raw.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    return [StreamEntry(_id(i), _fields(f), 1) for i, f in _stream_items(reply)]


def read_own_pending(
    raw: redis.Redis,
    consumer: str,
    *,
    count: int = 100,
    start: str = "-",
    count_delivery: bool = False,
    stream: str = STREAM,
    group: str = GROUP,
) -> list[StreamEntry]:
    """Up to ``count`` entries of ``consumer``'s PEL from ``start`` (inclusive), in id order.

    ``count_delivery=False`` leaves the delivery counters alone (see the module doc).
    """
    rows = raw.xpending_range(stream, group, min=start, max="+", count=count, consumername=consumer)
    if not rows:
        return []
    ids: list[Any] = [_id(r["message_id"]) for r in rows]
    counts = {_id(r["message_id"]): int(r["times_delivered"]) for r in rows}
    if count_delivery:
        # XCLAIM without JUSTID counts a delivery (and drops entries deleted from the stream).
        raw.xclaim(stream, group, consumer, 0, ids)
        counts = {k: v + 1 for k, v in counts.items()}
    else:
        raw.xclaim(stream, group, consumer, 0, ids, justid=True)
    pipe = raw.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(stream, entry_id, entry_id)
    found = pipe.execute()
    out: list[StreamEntry] = []
    for entry_id, got in zip(ids, found, strict=True):
        fields = _fields(got[0][1]) if got else None
        out.append(StreamEntry(str(entry_id), fields, counts[entry_id]))
    return out


def claim_stale(
    raw: redis.Redis,
    consumer: str,
    min_idle_ms: int,
    *,
    start: str = "0-0",
    count: int = 100,
    stream: str = STREAM,
    group: str = GROUP,
) -> tuple[str, int]:
    """One XAUTOCLAIM page into ``consumer`` (a counted delivery); (next cursor, claimed).

    The claimed entries are in ``consumer``'s PEL afterwards; read them with
    ``read_own_pending``. Not JUSTID: the owner stalled or died, so this is a redelivery.
    """
    reply = raw.xautoclaim(stream, group, consumer, min_idle_ms, start_id=start, count=count)
    return _id(reply[0]), len(reply[1])


def ack(raw: redis.Redis, *entry_ids: str, stream: str = STREAM, group: str = GROUP) -> int:
    return int(raw.xack(stream, group, *entry_ids)) if entry_ids else 0


def dead_letter(
    raw: redis.Redis,
    entry: StreamEntry,
    reason: str,
    extra: Mapping[str, str],
    *,
    stream: str = STREAM,
    group: str = GROUP,
    dlq: str = DEAD_LETTER_STREAM,
) -> bool:
    """XACK the entry and XADD it (raw fields plus ``dlq_*`` metadata) to ``dlq``, in one script;
    False when it was no longer pending (someone else finished it): nothing is added then."""
    fields: dict[bytes, bytes] = {
        b"dlq_source_id": entry.id.encode(),
        b"dlq_reason": reason.encode(),
        b"dlq_deliveries": str(entry.deliveries).encode(),
        b"dlq_stream": stream.encode(),
        b"dlq_group": group.encode(),
    }
    for key, value in extra.items():
        fields[b"dlq_" + key.encode()] = value.encode("utf-8", "surrogateescape")
    for raw_key, raw_value in (entry.fields or {}).items():
        fields.setdefault(raw_key, raw_value)
    args: list[Any] = [group, entry.id]
    for key_bytes, value_bytes in fields.items():
        args.extend((key_bytes, value_bytes))
    script = _SCRIPTS.get(raw, "dead_letter.lua")
    return int(script(keys=[stream, dlq], args=args)) == 1
