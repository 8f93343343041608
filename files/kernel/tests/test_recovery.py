from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import config, valid

from core_kernel import consume, streams
from core_kernel.mode import TradingMode, report_for
from core_kernel.recovery import (
    FileEventLog,
    RecoverySummary,
    consumer_inactive_ms,
    recover,
)

LIVE_CONSUMER = "host1:quantum-execution"


class Events:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, fields: Any) -> None:
        self.lines.append((event, dict(fields)))

    def names(self) -> list[str]:
        return [e for e, _ in self.lines]


def publish(client: redis.Redis, n: int, prefix: str = "t") -> None:
    streams.ensure_group(client)
    for i in range(n):
        streams.publish_intent_once(client, valid(trace_id=f"{prefix}{i}"))


def dead_consumer_reads(client: redis.Redis, name: str, count: int) -> list[str]:
    """A consumer that reads and then dies without acking (what a killed worker leaves)."""
    return [
        e.id for e in consume.read_new(consume.raw_client(client), name, block_ms=None, count=count)
    ]


def owners(client: redis.Redis) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in client.xpending_range(streams.STREAM, streams.GROUP, "-", "+", 10_000):
        out[row["consumer"]] = out.get(row["consumer"], 0) + 1
    return out


def run(client: redis.Redis, mode: TradingMode = TradingMode.TESTNET, **cfg: Any) -> Any:
    cfg.setdefault("EXECUTION_CONSUMER", LIVE_CONSUMER)
    events = Events()
    summary = recover(client, config(**cfg), report_for(mode), events)
    return summary, events


def test_reclaims_every_stale_entry_following_the_cursor(redis_client: redis.Redis) -> None:
    publish(redis_client, 250)
    dead_consumer_reads(redis_client, "12345", 250)  # old pid-named consumer
    time.sleep(0.08)
    summary, events = run(redis_client, STALE_IDLE_MS=50, RECOVERY_BATCH=100)
    assert summary.reclaimed == 250
    assert summary.batches >= 3
    assert owners(redis_client) == {LIVE_CONSUMER: 250}
    assert events.names()[0] == "RECOVER_START"
    assert events.names()[-1] == "RECOVER_DONE"
    assert events.names().count("RECLAIMED") >= 3
    # the live consumer finds them in its own pending list
    assert (
        len(consume.read_own_pending(consume.raw_client(redis_client), LIVE_CONSUMER, count=1000))
        == 250
    )


def test_fresh_pending_entries_are_left_alone(redis_client: redis.Redis) -> None:
    publish(redis_client, 5)
    dead_consumer_reads(redis_client, "busy", 5)
    summary, _ = run(redis_client, STALE_IDLE_MS=60_000)
    assert summary.reclaimed == 0
    assert owners(redis_client) == {"busy": 5}


def test_over_delivered_entries_go_to_the_dead_letter_stream(redis_client: redis.Redis) -> None:
    publish(redis_client, 3)
    ids = dead_consumer_reads(redis_client, "crashy", 3)
    # two more history reads: the first entry has now been delivered 3 times
    for _ in range(2):
        redis_client.xreadgroup(streams.GROUP, "crashy", {streams.STREAM: "0"}, count=1)
    time.sleep(0.08)
    summary, events = run(redis_client, STALE_IDLE_MS=50, MAX_DELIVERIES=2)
    assert summary.dead_lettered == 1
    assert summary.dead_lettered_ids == [ids[0]]
    assert summary.reclaimed == 2
    [(_dlq_id, fields)] = redis_client.xrange("quantum:stream:trade.intent.dlq")
    assert fields["dlq_source_id"] == ids[0]
    assert fields["dlq_deliveries"] == "3"
    assert fields["dlq_reason"] == "max_deliveries"
    assert fields["trace_id"] == "t0"
    pending_ids = {
        r["message_id"]
        for r in redis_client.xpending_range(streams.STREAM, streams.GROUP, "-", "+", 10)
    }
    assert ids[0] not in pending_ids
    assert "DEAD_LETTERED" in events.names()


def test_zombies_deleted_only_when_holding_nothing(redis_client: redis.Redis) -> None:
    publish(redis_client, 4)
    dead_consumer_reads(redis_client, "zombie-empty", 1)
    redis_client.xack(
        streams.STREAM,
        streams.GROUP,
        *[e.id for e in consume.read_own_pending(consume.raw_client(redis_client), "zombie-empty")],
    )
    dead_consumer_reads(redis_client, "zombie-busy", 2)
    time.sleep(0.12)
    dead_consumer_reads(redis_client, "fresh", 1)  # active just now
    summary, events = run(
        redis_client, STALE_IDLE_MS=600_000, ZOMBIE_IDLE_MS=100, MAX_INTENT_AGE_MS=700_000
    )
    assert summary.zombies_deleted == ["zombie-empty"]
    kept = {z["name"]: z["why"] for z in summary.zombies_kept}
    assert kept == {"zombie-busy": "has pending entries"}
    names = {c["name"] for c in redis_client.xinfo_consumers(streams.STREAM, streams.GROUP)}
    assert names == {"zombie-busy", "fresh"}
    assert owners(redis_client) == {"zombie-busy": 2, "fresh": 1}
    assert "ZOMBIE_DELETED" in events.names()


def test_stale_zombie_is_emptied_then_deleted_in_one_sweep(redis_client: redis.Redis) -> None:
    publish(redis_client, 3)
    dead_consumer_reads(redis_client, "4242", 3)
    time.sleep(0.12)
    summary, _ = run(redis_client, STALE_IDLE_MS=50, ZOMBIE_IDLE_MS=100)
    assert summary.reclaimed == 3
    assert summary.zombies_deleted == ["4242"]


def test_delete_script_refuses_consumer_with_pending(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    dead_consumer_reads(redis_client, "holder", 1)
    script = streams._SCRIPTS.get(redis_client, "delete_zombie.lua")
    assert script(keys=[streams.STREAM], args=[streams.GROUP, "holder", 0]) == [-1, 1]
    assert script(keys=[streams.STREAM], args=[streams.GROUP, "nobody", 0]) == [-3, 0]
    assert script(keys=[streams.STREAM], args=[streams.GROUP, "holder", 10**9])[0] == -1
    redis_client.xack(
        streams.STREAM,
        streams.GROUP,
        *[e.id for e in consume.read_own_pending(consume.raw_client(redis_client), "holder")],
    )
    assert script(keys=[streams.STREAM], args=[streams.GROUP, "holder", 10**9])[0] == -2
    assert script(keys=[streams.STREAM], args=[streams.GROUP, "holder", 0]) == [0, 0]


@pytest.mark.parametrize("mode", [TradingMode.LIVE, TradingMode.UNKNOWN])
def test_live_and_unknown_change_nothing(redis_client: redis.Redis, mode: TradingMode) -> None:
    publish(redis_client, 4)
    dead_consumer_reads(redis_client, "old", 3)
    redis_client.xgroup_createconsumer(streams.STREAM, streams.GROUP, "empty")
    time.sleep(0.12)
    before = (
        owners(redis_client),
        sorted(c["name"] for c in redis_client.xinfo_consumers(streams.STREAM, streams.GROUP)),
    )
    summary, events = run(redis_client, mode, STALE_IDLE_MS=50, ZOMBIE_IDLE_MS=100)
    after = (
        owners(redis_client),
        sorted(c["name"] for c in redis_client.xinfo_consumers(streams.STREAM, streams.GROUP)),
    )
    assert before == after
    assert summary.acted is False
    assert summary.would_reclaim == 3
    assert summary.would_delete_consumers == ["empty"]
    assert summary.reclaimed == 0
    assert "RECOVER_REPORT_ONLY" in events.names()


def test_live_does_not_create_a_missing_group(redis_client: redis.Redis) -> None:
    summary, events = run(redis_client, TradingMode.LIVE)
    assert summary.group_missing
    assert not redis_client.exists(streams.STREAM)
    assert "GROUP_MISSING" in events.names()


def test_testnet_creates_the_group(redis_client: redis.Redis) -> None:
    summary, _ = run(redis_client)
    assert summary.group_created
    assert redis_client.xinfo_groups(streams.STREAM)[0]["name"] == streams.GROUP


def test_idle_field_for_each_server_version() -> None:
    assert consumer_inactive_ms({"idle_ms": 500}) == 500  # 7.0: idle = since last success
    assert consumer_inactive_ms({"idle_ms": 5, "inactive_ms": 900}) == 900  # 7.2+
    assert consumer_inactive_ms({"idle_ms": 5, "inactive_ms": -1}) == 5  # never active


def test_file_event_log_lines(tmp_path: Path) -> None:
    log = FileEventLog(tmp_path / "sub" / "stream_recover.log")
    log("RECLAIMED", {"claimed": 3, "into": "h:quantum-execution"})
    log.close()
    line = (tmp_path / "sub" / "stream_recover.log").read_text().strip()
    assert line.endswith("RECLAIMED claimed=3 into=h:quantum-execution")
    assert line[:4].isdigit() and "T" in line.split()[0]
    bad = FileEventLog("/proc/no/such/dir/x.log")
    assert bad.error


def test_summary_is_json(redis_client: redis.Redis) -> None:
    summary, _ = run(redis_client)
    assert isinstance(summary, RecoverySummary)
    assert json.loads(json.dumps(summary.to_dict()))["mode"] == "TESTNET"


def test_own_stale_entries_are_reclaimed_in_place_and_dead_lettered_if_over_delivered(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, 2)
    ids = dead_consumer_reads(redis_client, LIVE_CONSUMER, 2)  # the live consumer's own PEL
    for _ in range(3):
        redis_client.xreadgroup(streams.GROUP, LIVE_CONSUMER, {streams.STREAM: "0"}, count=1)
    time.sleep(0.08)
    summary, _ = run(redis_client, STALE_IDLE_MS=50, MAX_DELIVERIES=3)
    assert summary.reclaimed == 1
    assert summary.dead_lettered_ids == [ids[0]]
    assert owners(redis_client) == {LIVE_CONSUMER: 1}
    [row] = redis_client.xpending_range(streams.STREAM, streams.GROUP, "-", "+", 10)
    assert row["time_since_delivered"] < 50  # the claim reset its idle time


def test_entries_deleted_from_the_stream_leave_the_pending_list(
    redis_client: redis.Redis,
) -> None:
    publish(redis_client, 3)
    ids = dead_consumer_reads(redis_client, "gone", 3)
    redis_client.xdel(streams.STREAM, ids[1])
    time.sleep(0.08)
    summary, _ = run(redis_client, STALE_IDLE_MS=50)
    assert summary.reclaimed == 2
    assert summary.deleted_entries == 1
    assert owners(redis_client) == {LIVE_CONSUMER: 2}


def test_live_reports_what_it_would_dead_letter(redis_client: redis.Redis) -> None:
    publish(redis_client, 150)
    dead_consumer_reads(redis_client, "old", 150)
    redis_client.xreadgroup(streams.GROUP, "old", {streams.STREAM: "0"}, count=1)
    redis_client.xreadgroup(streams.GROUP, "old", {streams.STREAM: "0"}, count=1)
    time.sleep(0.08)
    summary, _ = run(
        redis_client, TradingMode.LIVE, STALE_IDLE_MS=50, MAX_DELIVERIES=2, RECOVERY_BATCH=40
    )
    assert summary.would_dead_letter == 1
    assert summary.would_reclaim == 149
    assert not redis_client.exists("quantum:stream:trade.intent.dlq")
