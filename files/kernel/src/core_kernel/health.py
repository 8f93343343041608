"""A JSON snapshot of the intent stream for before/after evidence."""

from __future__ import annotations

from typing import Any

import redis

from core_kernel.recovery import _consumers, consumer_inactive_ms
from core_kernel.streams import GROUP, STREAM, _s


def stream_health(
    client: redis.Redis,
    stream: str = STREAM,
    group: str | None = GROUP,
    zombie_idle_ms: int | None = None,
    dead_letter_stream: str | None = None,
) -> dict[str, Any]:
    """Stream length, groups (pending, age of the oldest pending entry, lag, last delivered),
    consumers (idle, pending), and the dead-letter stream's length when it is named.

    The recovery sweep's textfile metrics are these numbers (metrics.stream_metrics).
    """
    out: dict[str, Any] = {"stream": stream, "exists": bool(client.exists(stream))}
    info = client.info("server")
    out["redis_version"] = _s(info.get("redis_version", ""))
    if dead_letter_stream is not None:
        out["dead_letter_stream"] = dead_letter_stream
        out["dead_letter_length"] = int(client.xlen(dead_letter_stream))
    if not out["exists"]:
        out.update({"length": 0, "groups": [], "healthy": False, "problems": ["stream missing"]})
        return out
    out["length"] = int(client.xlen(stream))
    problems: list[str] = []
    groups = []
    for g in client.xinfo_groups(stream):
        name = _s(g["name"])
        lag = g.get("lag")
        entry: dict[str, Any] = {
            "name": name,
            "consumers": int(g["consumers"]),
            "pending": int(g["pending"]),
            "last_delivered_id": _s(g["last-delivered-id"]),
            "entries_read": None if g.get("entries-read") is None else int(g["entries-read"]),
            "lag": None if lag is None else int(lag),
        }
        entry["oldest_pending_age_ms"] = _oldest_pending_age_ms(client, stream, name)
        consumers = _consumers(client, stream, name)
        for c in consumers:
            c["inactive_or_idle_ms"] = consumer_inactive_ms(c)
        entry["consumers_detail"] = consumers
        if zombie_idle_ms is not None:
            entry["zombies"] = [
                c["name"] for c in consumers if c["inactive_or_idle_ms"] >= zombie_idle_ms
            ]
            if entry["zombies"]:
                problems.append(f"group {name}: {len(entry['zombies'])} zombie consumer(s)")
        groups.append(entry)
    out["groups"] = groups
    if group is not None and not any(g["name"] == group for g in groups):
        problems.append(f"group {group} missing")
    out["problems"] = problems
    out["healthy"] = not problems
    return out


def _oldest_pending_age_ms(client: redis.Redis, stream: str, group: str) -> int | None:
    """Age of the group's oldest pending entry by its id (the time it was added, on Redis's
    clock), so a reclaim or a redelivery does not make it young again; None if none pending."""
    summary = client.xpending(stream, group)
    lowest = summary.get("min") if summary else None
    if not summary or not summary.get("pending") or lowest is None:
        return None
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return max(now_ms - int(_s(lowest).split("-", 1)[0]), 0)
