from __future__ import annotations

import re
import time
from typing import Any

import pytest
import redis
from helpers import fields, valid
from hypothesis import given
from hypothesis import strategies as st

from core_kernel import consume, streams
from core_kernel.intent import IntentError, client_order_id, decode_entry_fields, encode_intent

BINANCE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")


@given(st.text(min_size=1, max_size=300))
def test_client_order_id_always_valid_and_deterministic(trace_id: str) -> None:
    cid = client_order_id(trace_id)
    assert BINANCE.fullmatch(cid) and "\n" not in cid
    assert cid == client_order_id(trace_id)


def test_client_order_id_readable_when_possible_and_distinct() -> None:
    assert client_order_id("BTCUSDT_1768646023.04_0.87") == "BTCUSDT_1768646023.04_0.87"
    long = "x" * 37
    assert client_order_id(long).startswith("qk-")
    assert client_order_id("a b") != client_order_id("a_b")
    # an id that looks like our hash form is hashed too, so it cannot collide with one
    assert client_order_id("qk-abc") != "qk-abc"
    # "$" would accept a trailing newline; the id must not
    assert client_order_id("t-1\n") != "t-1\n"
    assert client_order_id("t-1\n").startswith("qk-")


def test_encode_decode_roundtrip() -> None:
    intent = valid(trace_id="t", reduce_only=True, qty="0.0100")
    fields = encode_intent(intent)
    assert fields["qty"] == "0.0100"  # the number as written, trailing zero kept
    assert fields["reduce_only"] == "true"
    back = decode_entry_fields({k.encode(): v.encode() for k, v in fields.items()})
    assert back == intent
    assert str(back.qty) == "0.0100"
    with pytest.raises(IntentError, match="confidence: unknown field"):
        decode_entry_fields({**fields, "confidence": "0.9"})


def test_publish_once_is_atomic_and_idempotent(redis_client: redis.Redis) -> None:
    first = streams.publish_intent_once(redis_client, valid(trace_id="T1"))
    assert first is not None
    assert streams.publish_intent_once(redis_client, valid(trace_id="T1")) is None
    assert redis_client.xlen(streams.STREAM) == 1
    key = "quantum:dedup:trade_intent:T1"
    assert 86300 < redis_client.ttl(key) <= 86400
    assert redis_client.get(key) == first
    with pytest.raises(ValueError, match="trace_id: missing"):
        streams.publish_intent_once(redis_client, {"symbol": "X"})
    # the stream never carries what would not parse: nothing was added, no key was taken
    with pytest.raises(IntentError, match="symbol: not text"):
        streams.publish_intent_once(redis_client, {**fields(trace_id="T9"), "symbol": 5})
    assert redis_client.exists("quantum:dedup:trade_intent:T9") == 0
    assert redis_client.xlen(streams.STREAM) == 1


def test_publish_failure_leaves_no_dedup_key(redis_client: redis.Redis) -> None:
    redis_client.set(streams.STREAM, "not a stream")
    with pytest.raises(redis.ResponseError):
        streams.publish_intent_once(redis_client, valid(trace_id="T2"))
    # XADD failed after the SET NX: the script removed the key again, so a retry can publish
    assert redis_client.exists("quantum:dedup:trade_intent:T2") == 0
    redis_client.delete(streams.STREAM)
    assert streams.publish_intent_once(redis_client, valid(trace_id="T2")) is not None


def test_claim_order_set_nx_ex(redis_client: redis.Redis) -> None:
    assert streams.claim_order(redis_client, "o1") is True
    assert streams.claim_order(redis_client, "o1") is False
    assert 86300 < redis_client.ttl("quantum:dedup:order:o1") <= 86400


def test_consumer_helpers(redis_client: redis.Redis) -> None:
    raw = consume.raw_client(redis_client)
    assert streams.ensure_group(redis_client) is True
    assert streams.ensure_group(redis_client) is False
    for i in range(3):
        streams.publish_intent_once(redis_client, valid(trace_id=f"c{i}"))
    got = consume.read_new(raw, "w1", block_ms=100, count=2)
    assert [e.fields[b"trace_id"] for e in got if e.fields] == [b"c0", b"c1"]
    assert [e.deliveries for e in got] == [1, 1]
    assert decode_entry_fields(got[0].fields or {}).trace_id == "c0"
    # re-reading the own PEL is no delivery: the counters stay at 1
    again = consume.read_own_pending(raw, "w1")
    assert [(e.id, e.deliveries) for e in again] == [(g.id, 1) for g in got]
    assert consume.ack(raw, got[0].id) == 1
    assert consume.ack(raw) == 0
    assert len(consume.read_own_pending(raw, "w1")) == 1
    time.sleep(0.03)
    assert consume.claim_stale(raw, "w2", min_idle_ms=20) == ("0-0", 1)
    [claimed] = consume.read_own_pending(raw, "w2")
    assert claimed.fields is not None and claimed.fields[b"trace_id"] == b"c1"
    assert claimed.deliveries == 2  # a claim from a stalled consumer is a redelivery
    assert consume.read_own_pending(raw, "w1") == []


def test_read_new_refuses_block_beyond_socket_timeout(redis_url: str) -> None:
    client = streams.make_client(redis_url)  # 5 s socket timeout, as redis-py 8 defaults
    with pytest.raises(ValueError, match="socket_timeout"):
        consume.read_new(consume.raw_client(client), "w", block_ms=5000, count=1)
    patient = streams.make_client(redis_url, socket_timeout=None)
    streams.ensure_group(patient)
    assert consume.read_new(consume.raw_client(patient), "w", block_ms=50, count=1) == []


def test_works_with_bytes_and_resp2(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, protocol=2)
    streams.ensure_group(client)
    streams.publish_intent_once(client, fields(trace_id="b1", reduce_only=False))
    [entry] = consume.read_new(client, "w", block_ms=None, count=1)
    assert entry.fields is not None and entry.fields[b"trace_id"] == b"b1"
    assert b"reduce_only" not in entry.fields  # false is the default: left out
    assert decode_entry_fields(entry.fields) == valid(trace_id="b1")
    [mine] = consume.read_own_pending(client, "w")
    assert mine.fields == entry.fields


@pytest.mark.parametrize(
    "setup",
    [
        lambda c, k: c.set(k, "someone else's"),
        lambda c, k: c.hset(k, "a", "1"),
        lambda c, k: c.rpush(k, "1"),
    ],
)
def test_a_foreign_intent_dedup_key_is_a_duplicate_and_left_alone(
    redis_client: redis.Redis, setup: Any
) -> None:
    key = "quantum:dedup:trade_intent:F1"
    setup(redis_client, key)
    before = redis_client.dump(key)
    assert streams.publish_intent_once(redis_client, valid(trace_id="F1")) is None
    assert redis_client.dump(key) == before
    assert redis_client.exists(streams.STREAM) == 0
