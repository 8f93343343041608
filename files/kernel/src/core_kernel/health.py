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
) -> dict[str, Any]:
    """Stream length, groups (pending, lag, last delivered), consumers (idle, pending)."""
    out: dict[str, Any] = {"stream": stream, "exists": bool(client.exists(stream))}
    info = client.info("server")
    out["redis_version"] = _s(info.get("redis_version", ""))
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
