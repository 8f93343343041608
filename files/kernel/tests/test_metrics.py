"""Metrics (issue 13): what the worker, the router and the sweep expose, read back the way
Prometheus reads it (the exposition text over HTTP, the textfile node_exporter reads)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from core_kernel import cli, consume, streams
from core_kernel.config import load_config, parse_listen
from core_kernel.exchange import from_config
from core_kernel.health import stream_health
from core_kernel.intent import parse_intent
from core_kernel.metrics import WorkerMetrics, previous_success, serve
from core_kernel.mode import TradingMode
from core_kernel.router import INBOX
from core_kernel.trading_state import TradingState, set_state
from core_kernel.worker import ORDER_UNKNOWN_KEY, Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def pipe(redis_url, tmp_path):
    p = Pipeline(redis_url, tmp_path)
    yield p
    p.close()


def worker(pipe: Pipeline, **env: object) -> Worker:
    config = load_config(
        pipe.workdir / "core_gates.env", environ={k: str(v) for k, v in env.items()}
    )
    ex = from_config(config, testnet=True, timeout_s=2.0)
    metrics = WorkerMetrics("TESTNET", process=False)
    return Worker(pipe.client, config, TradingMode.TESTNET, ex, block_ms=100, metrics=metrics)


def value(w: Worker, name: str, **labels: str) -> float:
    assert w.metrics is not None
    got = w.metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"no sample {name}{labels}"
    return got


def publish(pipe: Pipeline, i: int, **over: object) -> str:
    data = intent(i, pipe.run)
    data.update(over)
    assert streams.publish_intent_once(pipe.client, parse_intent(data)) is not None
    return str(data["trace_id"])


def run_new(w: Worker) -> None:
    entries = consume.read_new(w.raw, w.consumer, block_ms=None, count=100)
    w.on_read(len(entries))
    w._run_entries(entries)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# --- the worker -----------------------------------------------------------------------------
def test_known_label_values_are_zero_before_the_first_event(pipe):
    w = worker(pipe)
    for outcome in ("placed", "recovered", "rejected", "failed", "unknown"):
        assert value(w, "quantum_kernel_orders_total", outcome=outcome) == 0
    for outcome in ("handled", "dead_lettered", "invalid", "retry"):
        assert value(w, "quantum_kernel_entries_total", outcome=outcome) == 0
    labels = {"verdict": "HOLD", "primary": "MIN_NOTIONAL", "mode": "TESTNET"}
    assert value(w, "quantum_kernel_decisions_total", **labels) == 0
    assert value(w, "quantum_kernel_exchange_errors_total", status="429", code="-1003") == 0
    assert value(w, "quantum_kernel_last_processed_timestamp_seconds") == 0
    assert value(w, "quantum_kernel_trading_mode_info", mode="TESTNET") == 1


def test_decisions_orders_entries_and_timestamps(pipe):
    w = worker(pipe)
    before = time.time()
    publish(pipe, 1)
    publish(pipe, 2, qty="0.0001")  # below the minimum notional: HOLD
    run_new(w)
    assert (
        value(w, "quantum_kernel_decisions_total", verdict="PASS", primary="PASS", mode="TESTNET")
        == 1
    )
    hold = {"verdict": "HOLD", "primary": "MIN_NOTIONAL", "mode": "TESTNET"}
    assert value(w, "quantum_kernel_decisions_total", **hold) == 1
    assert value(w, "quantum_kernel_orders_total", outcome="placed") == 1
    assert value(w, "quantum_kernel_entries_total", outcome="handled") == 2
    assert value(w, "quantum_kernel_admit_duration_seconds_count") == 2
    assert value(w, "quantum_kernel_order_duration_seconds_count") == 1
    assert value(w, "quantum_kernel_last_processed_timestamp_seconds") >= before
    assert value(w, "quantum_kernel_last_read_timestamp_seconds") >= before
    assert value(w, "quantum_kernel_redis_up") == 1


def test_every_rate_limit_answer_counts_even_when_the_retry_succeeds(pipe):
    w = worker(pipe)
    publish(pipe, 1)
    pipe.fault(order_rate_limit=2)
    run_new(w)
    assert value(w, "quantum_kernel_orders_total", outcome="placed") == 1
    assert value(w, "quantum_kernel_exchange_errors_total", status="429", code="-1003") == 2


def test_unavailable_exchange_counts_its_5xx(pipe):
    w = worker(pipe)
    publish(pipe, 1)
    pipe.fault(ack_503=1)
    run_new(w)
    assert value(w, "quantum_kernel_exchange_errors_total", status="503", code="-1000") == 1
    assert value(w, "quantum_kernel_orders_total", outcome="unknown") == 1


def test_order_unknown_gauge_follows_redis(pipe):
    w = worker(pipe)
    publish(pipe, 1)
    pipe.fault(ack_drop=1, visibility_ms=600)
    run_new(w)
    assert value(w, "quantum_kernel_orders_unknown") == 1
    # A fresh process (metrics from 0) learns the unknown order from Redis on its PEL pass.
    w2 = worker(pipe)
    w2.consumer = w.consumer
    w2.prune_unknown()
    assert value(w2, "quantum_kernel_orders_unknown") == 1
    deadline = time.monotonic() + 15
    while pipe.client.hlen(ORDER_UNKNOWN_KEY):
        assert time.monotonic() < deadline, "the unknown order was never resolved"
        time.sleep(0.3)
        w.drain_own_pending()
    assert value(w, "quantum_kernel_orders_unknown") == 0
    assert value(w, "quantum_kernel_orders_total", outcome="recovered") == 1


def test_trading_state_gauge(pipe):
    w = worker(pipe)
    w._watch_state()
    assert value(w, "quantum_kernel_trading_state", state="ACTIVE") == 1
    set_state(pipe.client, TradingState.HALTED, "test: metrics")
    w._watch_state()
    assert value(w, "quantum_kernel_trading_state", state="HALTED") == 1
    assert value(w, "quantum_kernel_trading_state", state="ACTIVE") == 0
    # A value the kernel did not write is HALTED, as admit.lua reads it.
    pipe.client.hset("quantum:kernel:trading_state", "state", "maybe")
    w._watch_state()
    assert value(w, "quantum_kernel_trading_state", state="HALTED") == 1


def test_served_over_http_and_a_busy_port_is_one_log_line(pipe, caplog):
    w = worker(pipe)
    assert w.metrics is not None
    port = free_port()
    assert serve(w.metrics.registry, f"127.0.0.1:{port}", "test")
    got = scrape(f"http://127.0.0.1:{port}/metrics")
    assert got['quantum_kernel_orders_total{"outcome": "placed"}'] == 0
    assert not serve(w.metrics.registry, f"127.0.0.1:{port}", "test")
    assert "METRICS_UNAVAILABLE" in caplog.text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0.0.0:9478", "not a loopback"),
        ("10.1.2.3:9478", "not a loopback"),
        ("localhost:9478", "loopback IP"),
        ("127.0.0.1:0", "1..65535"),
        ("127.0.0.1:65536", "1..65535"),
        ("127.0.0.1:\uff19\uff14\uff17\uff18", "host:port"),  # fullwidth digits
        ("127.0.0.1", "host:port"),
    ],
)
def test_listen_addresses_are_loopback_only(text, why, tmp_path):
    with pytest.raises(ValueError, match=why):
        parse_listen(text)
    env = tmp_path / "k.env"
    env.write_text(f"WORKER_METRICS_LISTEN={text}\n")
    code = cli.main(["check-config", "--config", str(env)])
    assert code == cli.EXIT_CONFIG


def test_listen_addresses_accepted():
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:9478") == ("127.0.0.1", 9478)
    assert parse_listen("[::1]:9478") == ("::1", 9478)


# --- stream health and the sweep's textfile --------------------------------------------------
def test_health_has_oldest_pending_age_and_dead_letter_length(redis_client):
    streams.ensure_group(redis_client)
    redis_client.xadd(streams.STREAM, {"x": "1"}, id=f"{int(time.time() * 1000) - 5000}-0")
    redis_client.xadd("quantum:stream:trade.intent.dlq", {"reason": "t"})
    h = stream_health(redis_client, dead_letter_stream="quantum:stream:trade.intent.dlq")
    assert h["groups"][0]["oldest_pending_age_ms"] is None
    redis_client.xreadgroup(streams.GROUP, "dead", {streams.STREAM: ">"}, count=1)
    h = stream_health(redis_client, dead_letter_stream="quantum:stream:trade.intent.dlq")
    assert 4000 <= h["groups"][0]["oldest_pending_age_ms"] < 60_000
    assert h["dead_letter_length"] == 1


def _textfile(path: Path) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def test_sweep_textfile_success_then_failure_keeps_the_last_success(redis_url, tmp_path, capsys):
    env = tmp_path / "k.env"
    env.write_text(f"CORE_KERNEL_REDIS_URL={redis_url}\nTRADING_MODE=TESTNET\n")
    out = tmp_path / "metrics" / "quantum_kernel_recovery.prom"
    log = tmp_path / "recover.log"
    base = ["recover", "--config", str(env), "--log", str(log), "--textfile", str(out)]
    assert cli.main(base) == cli.EXIT_OK
    first = _textfile(out)
    assert first["quantum_kernel_recovery_success"] == 1
    assert first["quantum_kernel_recovery_errors"] == 0
    ok_at = first["quantum_kernel_recovery_last_success_timestamp_seconds"]
    assert ok_at == first["quantum_kernel_recovery_last_run_timestamp_seconds"] > 0
    assert first["quantum_kernel_stream_pending"] == 0
    assert first["quantum_kernel_stream_oldest_pending_age_seconds"] == 0
    assert first["quantum_kernel_dead_letter_length"] == 0
    assert os.stat(out).st_mode & 0o777 == 0o644
    time.sleep(0.01)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert cli.main([*base, "--redis-url", dead]) == cli.EXIT_REDIS_DOWN
    second = _textfile(out)
    assert second["quantum_kernel_recovery_success"] == 0
    assert second["quantum_kernel_recovery_errors"] == 1
    assert second["quantum_kernel_recovery_last_success_timestamp_seconds"] == ok_at
    assert second["quantum_kernel_recovery_last_run_timestamp_seconds"] > ok_at
    assert "quantum_kernel_stream_length" not in second  # nothing read: nothing claimed
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp file left
    capsys.readouterr()


def test_sweep_textfile_write_error_does_not_fail_the_sweep(redis_url, tmp_path, capsys):
    env = tmp_path / "k.env"
    env.write_text(f"CORE_KERNEL_REDIS_URL={redis_url}\nTRADING_MODE=TESTNET\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["recover", "--config", str(env), "--log", str(tmp_path / "r.log")]
    assert cli.main([*argv, "--textfile", str(blocker / "x.prom")]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is True
    assert err.count("\n") == 1 and "--textfile" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", [b"", b"garbage {{{\n", b"\xff\xfe", None])
def test_a_damaged_previous_textfile_means_no_success(tmp_path, damage):
    path = tmp_path / "x.prom"
    if damage is not None:
        path.write_bytes(damage)
    assert previous_success(path) == 0


# --- the router -------------------------------------------------------------------------------
def test_router_serve_counts_published_duplicates_and_errors(redis_url, tmp_path):
    port = free_port()
    env = tmp_path / "k.env"
    env.write_text(f"CORE_KERNEL_REDIS_URL={redis_url}\nROUTER_METRICS_LISTEN=127.0.0.1:{port}\n")
    proc_env = {**os.environ, "PYTHONPATH": SRC, "CORE_GATES_ENV": str(env)}
    proc_env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "core_kernel.router", "serve"],
        env=proc_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client = redis.Redis.from_url(redis_url)
        good = json.dumps(intent(1, "metrics"))
        client.rpush(INBOX, good, good, b'{"trace_id": 5}')
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 20
        while True:
            try:
                got = scrape(url)
                if got.get('quantum_kernel_router_publish_errors_total{"reason": "invalid"}'):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "router metrics never showed the three intents"
            time.sleep(0.2)
        assert got["quantum_kernel_router_intents_published_total{}"] == 1
        assert got["quantum_kernel_router_duplicates_skipped_total{}"] == 1
        assert got['quantum_kernel_router_publish_errors_total{"reason": "redis"}'] == 0
        assert got["quantum_kernel_router_last_publish_timestamp_seconds{}"] > 0
        assert got["process_resident_memory_bytes{}"] > 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
