"""One recovery sweep of the intent stream (``core-kernel recover``).

1. ensure the consumer group exists (MKSTREAM);
2. XAUTOCLAIM entries idle longer than STALE_IDLE_MS into the live consumer (EXECUTION_CONSUMER),
   following the cursor until 0-0, RECOVERY_BATCH entries per call so one call holds Redis for
   well under a millisecond (measured ~6-9 us of server time per entry, claim and checks
   included); entries delivered more than MAX_DELIVERIES times go to the dead-letter stream
   (XADD before XACK, in the same script). XAUTOCLAIM returns no delivery counts, so the
   script reads them for the claimed id range with one bounded XPENDING.
3. delete consumers idle longer than ZOMBIE_IDLE_MS that hold nothing pending (check and
   XGROUP DELCONSUMER in one script; its reply is checked).

In LIVE or UNKNOWN mode nothing is changed: the sweep reports what it would do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import redis

from core_kernel.config import KernelConfig
from core_kernel.consume import ORDER_UNKNOWN_KEY
from core_kernel.log import kv
from core_kernel.mode import ModeReport
from core_kernel.streams import _SCRIPTS, GROUP, STREAM, _s, ensure_group

EventLog = Callable[[str, Mapping[str, object]], None]

# Bound the report-only scan so a huge backlog cannot make a LIVE dry run slow.
_DRY_RUN_SCAN_LIMIT = 1_000_000


@dataclass
class RecoverySummary:
    mode: str
    may_mutate: bool
    acted: bool
    stream: str
    group: str
    consumer: str
    redis_version: str = ""
    group_created: bool = False
    group_missing: bool = False
    reclaimed: int = 0
    dead_lettered: int = 0
    dead_lettered_ids: list[str] = field(default_factory=list)
    deleted_entries: int = 0
    batches: int = 0
    zombies_deleted: list[str] = field(default_factory=list)
    zombies_kept: list[dict[str, Any]] = field(default_factory=list)
    would_reclaim: int = 0
    would_dead_letter: int = 0
    would_delete_consumers: list[str] = field(default_factory=list)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: float = 0.0
    ok: bool = True
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FileEventLog:
    """``<UTC ISO time> EVENT key=value ...`` lines appended to a file (falls back to a stream)."""

    def __init__(self, path: str | Path, fallback: TextIO | None = None) -> None:
        self.path = Path(path)
        self.fallback = fallback
        self.error = ""
        self._fh: TextIO | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            self.error = f"cannot open {self.path}: {exc.strerror or exc}"

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line = f"{stamp} {kv(event, fields)}\n"
        target = self._fh or self.fallback
        if target is not None:
            target.write(line)
            target.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _consumers(client: redis.Redis, stream: str, group: str) -> list[dict[str, Any]]:
    rows = client.execute_command(  # type: ignore[no-untyped-call]
        "XINFO", "CONSUMERS", stream, group
    )
    out: list[dict[str, Any]] = []
    for row in rows:
        if isinstance(row, Mapping):
            m = {_s(k): v for k, v in row.items()}
        else:
            it = iter(row)
            m = {_s(k): v for k, v in zip(it, it, strict=True)}
        entry: dict[str, Any] = {
            "name": _s(m["name"]),
            "pending": int(m["pending"]),
            "idle_ms": int(m["idle"]),
        }
        if "inactive" in m:
            entry["inactive_ms"] = int(m["inactive"])
        out.append(entry)
    return out


def consumer_inactive_ms(consumer: Mapping[str, Any]) -> int:
    """Time since the consumer's last successful interaction, for Redis 7.0 and 7.2+."""
    inactive = consumer.get("inactive_ms")
    if inactive is not None and int(inactive) >= 0:
        return int(inactive)
    return int(consumer["idle_ms"])


def _group_exists(client: redis.Redis, stream: str, group: str) -> bool:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such key
        return False
    return any(_s(g["name"]) == group for g in groups)


def recover(
    client: redis.Redis,
    config: KernelConfig,
    mode: ModeReport,
    log: EventLog,
    *,
    stream: str = STREAM,
    group: str = GROUP,
) -> RecoverySummary:
    """One sweep. Raises redis errors (the CLI turns them into exit codes)."""
    started = time.perf_counter()
    consumer = config.consumer_name
    summary = RecoverySummary(
        mode=mode.mode.value,
        may_mutate=mode.may_mutate,
        acted=mode.may_mutate,
        stream=stream,
        group=group,
        consumer=consumer,
    )
    info = client.info("server")
    summary.redis_version = _s(info.get("redis_version", ""))
    log(
        "RECOVER_START",
        {
            "mode": mode.mode,
            "may_mutate": mode.may_mutate,
            "stream": stream,
            "group": group,
            "consumer": consumer,
            "stale_idle_ms": config.stale_idle_ms,
            "zombie_idle_ms": config.zombie_idle_ms,
            "redis_version": summary.redis_version,
        },
    )
    if not mode.may_mutate:
        log("RECOVER_REPORT_ONLY", {"mode": mode.mode, "reason": mode.detail or "not TESTNET"})

    # 1. group
    if mode.may_mutate:
        summary.group_created = ensure_group(client, stream, group)
        if summary.group_created:
            log("GROUP_CREATED", {"stream": stream, "group": group})
    elif not _group_exists(client, stream, group):
        summary.group_missing = True
        log("GROUP_MISSING", {"stream": stream, "group": group, "action": "would create"})

    # 2. stale entries
    if mode.may_mutate:
        _reclaim(
            client,
            config=config,
            summary=summary,
            log=log,
            stream=stream,
            group=group,
            consumer=consumer,
        )
    elif not summary.group_missing:
        _dry_run_reclaim(client, config, summary, stream, group)
        log(
            "WOULD_RECLAIM",
            {"entries": summary.would_reclaim, "dead_letter": summary.would_dead_letter},
        )

    # 3. zombie consumers
    if not summary.group_missing:
        _zombies(
            client,
            config=config,
            summary=summary,
            log=log,
            stream=stream,
            group=group,
            may_mutate=mode.may_mutate,
        )

    summary.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log(
        "RECOVER_DONE",
        {
            "mode": mode.mode,
            "acted": summary.acted,
            "reclaimed": summary.reclaimed,
            "dead_lettered": summary.dead_lettered,
            "zombies_deleted": len(summary.zombies_deleted),
            "would_reclaim": summary.would_reclaim,
            "would_delete_consumers": len(summary.would_delete_consumers),
            "duration_ms": summary.duration_ms,
        },
    )
    return summary


def _reclaim(
    client: redis.Redis,
    *,
    config: KernelConfig,
    summary: RecoverySummary,
    log: EventLog,
    stream: str,
    group: str,
    consumer: str,
) -> None:
    script = _SCRIPTS.get(client, "recover_batch.lua")
    cursor = "0-0"
    while True:
        reply = script(
            keys=[stream, config.dead_letter_stream, ORDER_UNKNOWN_KEY],
            args=[
                group,
                consumer,
                config.stale_idle_ms,
                cursor,
                config.recovery_batch,
                config.max_deliveries,
            ],
        )
        cursor = _s(reply[0])
        claimed, dead, deleted = int(reply[1]), [_s(x) for x in reply[2]], int(reply[3])
        summary.batches += 1
        summary.reclaimed += claimed
        summary.dead_lettered += len(dead)
        summary.deleted_entries += deleted
        if len(summary.dead_lettered_ids) < 1000:
            summary.dead_lettered_ids.extend(dead[: 1000 - len(summary.dead_lettered_ids)])
        if claimed or deleted:
            log(
                "RECLAIMED",
                {
                    "batch": summary.batches,
                    "claimed": claimed,
                    "into": consumer,
                    "deleted_from_stream": deleted,
                },
            )
        for entry_id in dead:
            log(
                "DEAD_LETTERED",
                {"id": entry_id, "dlq": config.dead_letter_stream, "max": config.max_deliveries},
            )
        if cursor == "0-0":
            break


def _dry_run_reclaim(
    client: redis.Redis,
    config: KernelConfig,
    summary: RecoverySummary,
    stream: str,
    group: str,
) -> None:
    """What ``_reclaim`` would do, from the same bounded pages of the pending list."""
    start = "-"
    page = config.recovery_batch
    seen = 0
    while seen < _DRY_RUN_SCAN_LIMIT:
        rows = client.xpending_range(stream, group, min=start, max="+", count=page)
        for row in rows:
            if int(row["time_since_delivered"]) < config.stale_idle_ms:
                continue
            # The sweep's JUSTID claim is not a delivery: this is the count it would check.
            if int(row["times_delivered"]) > config.max_deliveries:
                summary.would_dead_letter += 1
            else:
                summary.would_reclaim += 1
        seen += len(rows)
        if len(rows) < page:
            break
        start = "(" + _s(rows[-1]["message_id"])


def _zombies(
    client: redis.Redis,
    *,
    config: KernelConfig,
    summary: RecoverySummary,
    log: EventLog,
    stream: str,
    group: str,
    may_mutate: bool,
) -> None:
    consumers = _consumers(client, stream, group)
    summary.consumers = consumers
    script = _SCRIPTS.get(client, "delete_zombie.lua") if may_mutate else None
    for c in consumers:
        idle = consumer_inactive_ms(c)
        if idle < config.zombie_idle_ms:
            continue
        if c["pending"] > 0:
            summary.zombies_kept.append({**c, "why": "has pending entries"})
            log(
                "ZOMBIE_KEPT",
                {"consumer": c["name"], "pending": c["pending"], "idle_ms": idle},
            )
            continue
        if script is None:
            summary.would_delete_consumers.append(c["name"])
            log("WOULD_DELETE_CONSUMER", {"consumer": c["name"], "idle_ms": idle})
            continue
        status, value = (
            int(x) for x in script(keys=[stream], args=[group, c["name"], config.zombie_idle_ms])
        )
        if status == 0 and value == 0:
            summary.zombies_deleted.append(c["name"])
            log("ZOMBIE_DELETED", {"consumer": c["name"], "idle_ms": idle, "pending": 0})
        elif status == 0:
            # Cannot happen (checked in the same script) - but if it did, say so loudly.
            summary.ok = False
            summary.error = f"DELCONSUMER {c['name']} dropped {value} pending entries"
            log("ZOMBIE_DELETE_LOST_PENDING", {"consumer": c["name"], "pending": value})
        else:
            why = {-1: "pending appeared", -2: "became active", -3: "already gone"}[status]
            summary.zombies_kept.append({**c, "why": why})
            log("ZOMBIE_KEPT", {"consumer": c["name"], "why": why})
