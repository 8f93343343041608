"""The reference router (publish once, serve) and the lab demo driver, as processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core_kernel import streams
from core_kernel.router import INBOX

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent


@pytest.fixture
def pipe(redis_url, tmp_path):
    p = Pipeline(redis_url, tmp_path)
    for w in p.workers:
        w.env["EXECUTION_CONSUMER"] = w.name
    yield p
    p.close()


def router(pipe: Pipeline, *args: str, stdin: str = "", env: dict | None = None):
    full = dict(pipe.workers[0].env)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "core_kernel.router", *args],
        input=stdin,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_publish_lines_once(pipe):
    a = json.dumps(intent(1, pipe.run))
    b = json.dumps(intent(2, pipe.run))
    lines = "\n".join([a, b, a, "", "not json", json.dumps({"symbol": "BTCUSDT"})]) + "\n"
    proc = router(pipe, "publish", "-", stdin=lines)
    assert proc.returncode == 1, proc.stderr  # invalid lines are reported, the rest published
    out = json.loads(proc.stdout)
    assert (out["published"], out["duplicates"], out["invalid"]) == (2, 1, 2)
    assert "line 5: not JSON" in out["errors"][0]
    assert "trace_id: missing" in out["errors"][1]
    assert pipe.client.xlen(streams.STREAM) == 2
    again = router(pipe, "publish", "-", stdin=a + "\n")
    assert again.returncode == 0
    assert json.loads(again.stdout)["duplicates"] == 1


def test_serve_publishes_from_inbox_and_stops_on_sigterm(pipe):
    full = dict(pipe.workers[0].env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "core_kernel.router", "serve"],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        item = json.dumps(intent(4, pipe.run))
        pipe.client.rpush(INBOX, item, item, "garbage", b"\xff\xfe not UTF-8")
        deadline = time.monotonic() + 20
        while pipe.client.llen(INBOX) or pipe.client.xlen(streams.STREAM) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.3)
        assert pipe.client.xlen(streams.STREAM) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "INTENT_INVALID" in err
    assert "ROUTER_STOP published=1 duplicates=1 invalid=2" in err
    assert "Traceback" not in err


def test_serve_puts_the_intent_back_and_says_why_when_redis_refuses_it(pipe):
    # The group exists (serve starts), but no XADD can succeed: the last possible id is taken.
    pipe.client.delete(streams.STREAM)
    top = "18446744073709551615-18446744073709551615"
    pipe.client.xadd(streams.STREAM, {"x": "1"}, id=top)
    streams.ensure_group(pipe.client)
    item = json.dumps(intent(5, pipe.run))
    pipe.client.rpush(INBOX, item)
    proc = subprocess.run(
        [sys.executable, "-m", "core_kernel.router", "serve"],
        env=dict(pipe.workers[0].env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert "exhausted" in proc.stderr and "Traceback" not in proc.stderr
    assert pipe.client.lrange(INBOX, 0, -1) == [item]  # not lost
    pipe.client.delete(streams.STREAM)


def test_lab_demo_phases(pipe, tmp_path):
    worker = pipe.workers[0]
    env = {"MIN_HOLD_SECONDS": "300", "MAX_TRADES_10MIN": "3"}  # the lab's defaults
    worker.env.update(env)
    worker.start()
    url = pipe.exchange.root_url
    basic = router(pipe, "demo", "--phase", "basic", "--exchange-url", url, env=env)
    assert basic.returncode == 0, basic.stderr
    assert json.loads(basic.stdout)["duplicates"] == 1
    assert worker.term() == 0
    held = router(pipe, "demo", "--phase", "hold-pending", "--exchange-url", url, env=env)
    assert held.returncode == 0, held.stderr
    assert json.loads(held.stdout)["delivered"]
    pending = pipe.client.xinfo_consumers(streams.STREAM, streams.GROUP)
    assert [(c["name"], c["pending"]) for c in pending] == [(worker.name, 1)]
    worker.start()
    out = tmp_path / "pipeline_demo.json"
    verify = router(
        pipe, "demo", "--phase", "verify", "--exchange-url", url, "--out", str(out), env=env
    )
    assert worker.term() == 0
    assert verify.returncode == 0, verify.stdout + verify.stderr
    summary = json.loads(out.read_text())
    assert summary["ok"] is True
    assert summary["intents_published"] == 6
    assert summary["duplicates_skipped"] == 1
    assert summary["orders_placed"] == 2  # the duplicated intent once, the pending one once
    assert summary["holds_by_reason"] == {
        "MIN_NOTIONAL": 1,
        "EDGE_TOO_SMALL": 1,
        "R_TOO_LOW": 1,
        "MODEL_REGIME_MISMATCH": 1,
    }
    assert summary["results"] == 6
    assert summary["restart_recovered"] is True
    assert summary["consumers"] == [
        {"name": worker.name, "pending": 0, "idle_ms": summary["consumers"][0]["idle_ms"]}
    ]
