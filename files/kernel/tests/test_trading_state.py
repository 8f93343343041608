"""The operator's trading state (issue 14): real Redis, real fake-Binance HTTP server, real CLI.

Every transition is checked the NautilusTrader way: the reason the decision names and that
nothing reached the exchange (orders counted on the fake over HTTP).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RedisServer
from helpers import config, valid

from core_kernel import cli, consume, gates, streams
from core_kernel.config import load_config
from core_kernel.exchange import from_config
from core_kernel.gates import GateVerdict, Reason
from core_kernel.intent import parse_intent
from core_kernel.mode import TradingMode
from core_kernel.store import KernelStore
from core_kernel.trading_state import (
    TradingState,
    audit_stream,
    read_state,
    set_state,
    state_key,
)
from core_kernel.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fault_injection import Pipeline, intent

STATE_KEY = state_key()
AUDIT = audit_stream()
CORE_KERNEL = shutil.which("core-kernel", path=str(Path(sys.executable).parent))
WHO = ("tester", "testhost")
EXIT = {"reduce_only": True, "side": "SELL"}


def store(client: redis.Redis, mode: TradingMode = TradingMode.TESTNET) -> KernelStore:
    return KernelStore(client, config(MIN_HOLD_SECONDS=0, MAX_TRADES_10MIN=10**6), mode)


def exit_intent(trace_id: str) -> Any:
    return parse_intent(
        {"symbol": "ETHUSDT", "qty": "0.01", "price": "3500", **EXIT, "trace_id": trace_id}
    )


# --- the admit script ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(TradingMode))
@pytest.mark.parametrize(
    ("state", "entry_reason", "exit_reason"),
    [
        (TradingState.ACTIVE, None, None),
        (TradingState.REDUCING, Reason.REDUCING_ONLY, None),
        (TradingState.HALTED, Reason.TRADING_HALTED, Reason.TRADING_HALTED),
    ],
)
def test_each_state_holds_what_it_should_in_every_mode(
    redis_client: redis.Redis,
    mode: TradingMode,
    state: TradingState,
    entry_reason: Reason | None,
    exit_reason: Reason | None,
) -> None:
    set_state(redis_client, state, "test", who=WHO)
    s = store(redis_client, mode)
    entry = s.admit(valid(trace_id="e1"))
    leave = s.admit(exit_intent("x1"))
    for decision, reason in ((entry, entry_reason), (leave, exit_reason)):
        assert decision.context["trading_state"] == state.value
        if reason is None:
            assert decision.verdict is GateVerdict.PASS
            assert reason not in decision.reasons
        else:
            # LIVE too: the operator's command is never audit-only.
            assert decision.verdict is GateVerdict.HOLD
            assert decision.primary is reason
            assert redis_client.get(s.order_key(decision.trace_id or "")).startswith("k1|H|")
    # a held entry is not recorded as a trade
    assert redis_client.zcard(s.trades_key) == (1 if entry_reason is None else 0)
    # and the what-if mirror applies the same rule
    for exit_only, reason in ((False, entry_reason), (True, exit_reason)):
        assert gates.state_reason(state.value, exit_only) is reason


@pytest.mark.parametrize(
    ("plant", "detail"),
    [
        (lambda c: c.set(STATE_KEY, "ACTIVE"), "wrong type"),
        (lambda c: c.hset(STATE_KEY, "state", "active"), "unknown state value"),
        (lambda c: c.hset(STATE_KEY, "state", "ACTIVE "), "unknown state value"),
        (lambda c: c.hset(STATE_KEY, "reason", "no state field"), "no state field"),
        (lambda c: c.rpush(STATE_KEY, "ACTIVE"), "wrong type"),
    ],
)
@pytest.mark.parametrize("mode", [TradingMode.TESTNET, TradingMode.LIVE])
def test_unreadable_or_unknown_state_is_halted(
    redis_client: redis.Redis, plant: Any, detail: str, mode: TradingMode
) -> None:
    plant(redis_client)
    s = store(redis_client, mode)
    for decision in (s.admit(valid(trace_id="e1")), s.admit(exit_intent("x1"))):
        assert decision.verdict is GateVerdict.HOLD
        assert decision.primary is Reason.TRADING_HALTED
        assert decision.context["trading_state"] == "HALTED"
        assert detail in decision.context["trading_state_error"]
    assert s.evaluate(valid(trace_id="e2")).primary is Reason.TRADING_HALTED
    assert read_state(redis_client).state is TradingState.HALTED
    # the operator's next command replaces what was found, and says so in the audit entry
    change = set_state(redis_client, TradingState.ACTIVE, "repair", who=WHO)
    assert change.changed and change.before is TradingState.HALTED
    assert redis_client.xrevrange(AUDIT, count=1)[0][1]["found"] != ""
    assert s.admit(valid(trace_id="e3")).verdict is GateVerdict.PASS


def test_no_state_key_is_active(redis_client: redis.Redis) -> None:
    # The never-set state: a fresh Redis trades (documented choice, see README).
    decision = store(redis_client).admit(valid(trace_id="e1"))
    assert decision.verdict is GateVerdict.PASS
    assert decision.context["trading_state"] == "ACTIVE"


def test_a_pass_replayed_after_a_halt_is_held_and_its_record_kept(
    redis_client: redis.Redis,
) -> None:
    s = store(redis_client)
    first = s.admit(valid(trace_id="e1"))
    assert first.verdict is GateVerdict.PASS
    stored = redis_client.get(s.order_key("e1"))
    set_state(redis_client, TradingState.HALTED, "stop", who=WHO)
    again = s.admit(valid(trace_id="e1"))
    assert again.replayed and again.verdict is GateVerdict.HOLD
    assert again.primary is Reason.TRADING_HALTED
    assert again.client_order_id == first.client_order_id  # the worker can still look it up
    assert redis_client.get(s.order_key("e1")) == stored
    set_state(redis_client, TradingState.REDUCING, "exits only", who=WHO)
    assert s.admit(valid(trace_id="e1")).primary is Reason.REDUCING_ONLY
    set_state(redis_client, TradingState.ACTIVE, "go", who=WHO)
    assert s.admit(valid(trace_id="e1")).verdict is GateVerdict.PASS


def test_an_intent_held_while_halted_stays_held_after_resume(redis_client: redis.Redis) -> None:
    s = store(redis_client)
    set_state(redis_client, TradingState.HALTED, "stop", who=WHO)
    assert s.admit(valid(trace_id="e1")).verdict is GateVerdict.HOLD
    set_state(redis_client, TradingState.ACTIVE, "go", who=WHO)
    late = s.admit(valid(trace_id="e1"))
    assert late.replayed and late.verdict is GateVerdict.HOLD
    assert late.primary is Reason.TRADING_HALTED


@pytest.mark.parametrize("state", list(TradingState))
def test_the_state_survives_a_redis_restart(tmp_path: Path, state: TradingState) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        first = TradingState.REDUCING if state is TradingState.HALTED else TradingState.HALTED
        set_state(client, first, "first", who=WHO)
        set_state(client, state, "second", who=WHO)
        client.close()
        server.stop(kill=True)  # AOF with appendfsync always: nothing acknowledged is lost
        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        view = read_state(client)
        assert view.state is state and view.raw["reason"] == "second"
        s = store(client)
        decision = s.admit(valid(trace_id="after-restart"))
        assert decision.context["trading_state"] == state.value
        assert (decision.verdict is GateVerdict.PASS) == (state is TradingState.ACTIVE)
        assert client.xlen(AUDIT) == 2
        client.close()
    finally:
        server.stop()


def test_twenty_workers_admit_nothing_after_the_halt_commits(redis_url: str) -> None:
    """20 threads, each with its own connection, admit as fast as they can while a halt lands.

    Redis runs the halt script and every admit one at a time, so each decision is on one side
    of the halt: every PASS has a decision time <= the halt's, every admit started after
    ``set_state`` returned is HOLD TRADING_HALTED, and the trades recorded are the PASSes.
    """
    workers = 20
    lock = threading.Lock()
    barrier = threading.Barrier(workers + 1)
    halted_at: list[float] = []
    rows: list[tuple[float, GateVerdict, tuple[Reason, ...], int]] = []

    def worker(n: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        s = store(client)
        barrier.wait()
        held_after = 0
        k = 0
        while held_after < 20 and k < 5000:
            started = time.monotonic()
            d = s.admit(valid(symbol="ETHUSDT", trace_id=f"w{n}-{k}"))
            stored = client.get(s.order_key(f"w{n}-{k}")) or ""
            with lock:
                rows.append((started, d.verdict, d.reasons, int(stored.split("|")[2])))
            if d.verdict is GateVerdict.HOLD:
                held_after += 1
            k += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    barrier.wait()
    time.sleep(0.3)
    change = set_state(admin, TradingState.HALTED, "halt under load", who=WHO)
    halted_at.append(time.monotonic())
    for t in threads:
        t.join()
    passes = [r for r in rows if r[1] is GateVerdict.PASS]
    holds = [r for r in rows if r[1] is GateVerdict.HOLD]
    assert len(passes) > 20, "the halt landed before the workers got going: the test proves nothing"
    assert holds and all(r[2] == (Reason.TRADING_HALTED,) for r in holds)
    assert all(r[3] <= change.at_ms for r in passes)
    assert all(r[3] >= change.at_ms for r in holds)
    assert not [r for r in passes if r[0] > halted_at[0]]
    assert admin.zcard(store(admin).trades_key) == len(passes)
    admin.close()


# --- through the worker to the exchange --------------------------------------------------------
@pytest.fixture
def pipe(redis_url: str, tmp_path: Path) -> Any:
    p = Pipeline(redis_url, tmp_path)
    yield p
    p.close()


def _worker(pipe: Pipeline) -> Worker:
    cfg = load_config(pipe.workdir / "core_gates.env", environ={})
    ex = from_config(cfg, testnet=True, timeout_s=2.0)
    return Worker(pipe.client, cfg, TradingMode.TESTNET, ex, consumer="w1:x", block_ms=100)


def _run(pipe: Pipeline, w: Worker, *datas: dict[str, Any]) -> dict[str, dict[str, str]]:
    for data in datas:
        assert streams.publish_intent_once(pipe.client, parse_intent(data)) is not None
    w._run_entries(consume.read_new(w.raw, w.consumer, block_ms=None, count=100))
    return {r["trace_id"]: r for r in pipe.results()}


def _exit(n: int, run: str) -> dict[str, Any]:
    return {
        "trace_id": f"x-{run}-{n}",
        "symbol": "ETHUSDT",
        "side": "SELL",
        "qty": "0.100",
        "price": "3000",
        "reduce_only": True,
    }


def test_every_transition_through_the_worker_and_what_reached_the_exchange(pipe: Pipeline) -> None:
    w = _worker(pipe)
    steps = [
        # (to, entry result, exit result)
        (TradingState.HALTED, "TRADING_HALTED", "TRADING_HALTED"),
        (TradingState.REDUCING, "REDUCING_ONLY", None),
        (TradingState.HALTED, "TRADING_HALTED", "TRADING_HALTED"),
        (TradingState.ACTIVE, None, None),
        (TradingState.REDUCING, "REDUCING_ONLY", None),
        (TradingState.ACTIVE, None, None),
    ]
    placed = 0
    for n, (to, entry_hold, exit_hold) in enumerate(steps):
        code, out = _cli_set(pipe, to, f"step {n}")
        assert code == 0 and json.loads(out)["to"] == to.value
        entry, leave = intent(2 * n + 1, pipe.run), _exit(n, pipe.run)
        res = _run(pipe, w, entry, leave)
        for data, hold in ((entry, entry_hold), (leave, exit_hold)):
            r = res[data["trace_id"]]
            if hold is None:
                assert r["status"] == "order_placed", r
                placed += 1
            else:
                assert r["status"] == "gate_blocked" and r["primary"] == hold, r
        orders = pipe.exchange_orders()
        assert len(orders) == placed  # nothing held reached the exchange
        assert {o["clientOrderId"] for o in orders} <= {
            t for t, r in res.items() if r["status"] == "order_placed"
        }
    audit = pipe.client.xrange(AUDIT)
    assert [(f["from"], f["to"]) for _id, f in audit] == [
        ("ACTIVE", "HALTED"),
        ("HALTED", "REDUCING"),
        ("REDUCING", "HALTED"),
        ("HALTED", "ACTIVE"),
        ("ACTIVE", "REDUCING"),
        ("REDUCING", "ACTIVE"),
    ]


def _cli_set(pipe: Pipeline, state: TradingState, reason: str) -> tuple[int, str]:
    command = {TradingState.HALTED: "halt", TradingState.REDUCING: "reduce"}.get(state, "resume")
    assert CORE_KERNEL
    proc = subprocess.run(
        [CORE_KERNEL, command, "--json", "--reason", reason, "--redis-url", pipe.redis_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CORE_GATES_ENV": str(pipe.workdir / "core_gates.env")},
    )
    assert "Traceback" not in proc.stderr
    if proc.returncode == 0:
        assert "TRADING_STATE_CHANGED" in proc.stderr or "TRADING_STATE_UNCHANGED" in proc.stderr
        assert "BINANCE_API_SECRET" not in proc.stderr + proc.stdout
    return proc.returncode, proc.stdout


# --- the CLI -----------------------------------------------------------------------------------
def _cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], stdin: bytes | None = None
) -> tuple[int, str, str]:
    code = cli.main(argv, stdin=io.BytesIO(stdin) if stdin is not None else None)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_env_file(no_kernel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # SUDO_USER too: the audit record names the operator from it.
    monkeypatch.delenv("SUDO_USER", raising=False)


def test_state_commands_record_who_when_from_and_why(
    redis_client: redis.Redis,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    code, out, _ = _cli(["state", "--json", "--redis-url", redis_url], capsys)
    assert code == 0 and json.loads(out) == {"state": "ACTIVE"}
    code, out, err = _cli(
        ["halt", "--json", "--reason", "exchange incident #42", "--redis-url", redis_url], capsys
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["changed"] and answer["from"] == "ACTIVE" and answer["to"] == "HALTED"
    ((entry_id, audit),) = redis_client.xrange(AUDIT)
    assert audit["reason"] == "exchange incident #42"
    assert audit["user"] and audit["host"] and audit["from"] == "ACTIVE"
    assert int(audit["at_ms"]) == answer["at_ms"] and entry_id == answer["audit_id"]
    # (the console script's stderr line is checked in _cli_set; here pytest holds the logger)
    assert "TRADING_STATE_CHANGED from=ACTIVE to=HALTED" in caplog.text
    assert 'reason="exchange incident #42"' in caplog.text
    # the same command again changes nothing and writes nothing
    code, out, _ = _cli(["halt", "--json", "--reason", "again", "--redis-url", redis_url], capsys)
    assert code == 0 and json.loads(out)["changed"] is False
    assert redis_client.xlen(AUDIT) == 1
    code, out, _ = _cli(["state", "--json", "--history", "5", "--redis-url", redis_url], capsys)
    shown = json.loads(out)
    assert shown["state"] == "HALTED" and shown["reason"] == "exchange incident #42"
    assert [h["to"] for h in shown["history"]] == ["HALTED"]
    code, out, _ = _cli(["state", "--redis-url", redis_url], capsys)
    assert out.startswith("HALTED since") and "exchange incident #42" in out
    code, out, _ = _cli(["resume", "--reason", "all clear", "--redis-url", redis_url], capsys)
    assert (
        code == 0
        and out == "HALTED -> ACTIVE (audit " + redis_client.xrevrange(AUDIT, count=1)[0][0] + ")\n"
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["halt", "--reason", ""], "--reason: must not be empty"),
        (["halt", "--reason", "   "], "--reason: must not be empty"),
        (["reduce", "--reason", "two\nlines"], "--reason: must be one line"),
        (["resume", "--reason", "x" * 501], "--reason: must be at most 500"),
        (["halt", "--reason", "ok", "--redis-url", "http://x"], "--redis-url=http://x"),
        (["state", "--history", "-1"], "must be an integer in 0 .. 1000"),
    ],
)
def test_bad_command_lines_are_one_line_exit_2_and_change_nothing(
    redis_client: redis.Redis,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    if "--redis-url" not in argv:
        argv = [*argv, "--redis-url", redis_url]
    with pytest.raises(SystemExit) if "--history" in argv else _nothing():
        code, _out, err = _cli(argv, capsys)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and needle in err
    assert redis_client.exists(STATE_KEY, AUDIT) == 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_halt_with_redis_down_is_exit_3_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = RedisServer(Path("/nonexistent")).port  # a free port, nothing listening
    code, out, err = _cli(
        ["halt", "--reason", "x", "--redis-url", f"redis://127.0.0.1:{port}/0"], capsys
    )
    assert code == 3 and out == "" and len(err.strip().splitlines()) == 1
    assert "redis unreachable" in err and "Traceback" not in err


def test_evaluate_answers_with_the_stored_state_and_takes_it_as_a_situation(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    set_state(redis_client, TradingState.REDUCING, "exits only", who=WHO)
    line = json.dumps(
        {
            k: str(v)
            for k, v in {
                "symbol": "ETHUSDT",
                "side": "BUY",
                "qty": "0.01",
                "price": "3500",
                "expected_move_usd": "250",
                "tp": "3587.5",
                "sl": "3465",
                "model": "NHiTS",
                "regime": "TREND",
            }.items()
        }
    )
    exit_line = json.dumps(
        {"symbol": "ETHUSDT", "side": "SELL", "qty": "0.01", "price": "3500", "reduce_only": True}
    )
    before = redis_client.dbsize()
    code, out, _ = _cli(
        ["evaluate", "--mode", "LIVE", "--redis-url", redis_url],
        capsys,
        (line + "\n" + exit_line + "\n").encode(),
    )
    first, second = (json.loads(x) for x in out.splitlines())
    assert code == 0
    assert first["verdict"] == "HOLD" and first["reasons"] == ["REDUCING_ONLY"]
    assert first["context"]["trading_state"] == "REDUCING"
    assert second["verdict"] == "PASS" and second["context"]["trading_state"] == "REDUCING"
    assert redis_client.dbsize() == before  # read-only
    # without Redis: the situation field, validated like the other what-if fields
    halted = json.loads(line) | {"trading_state": "HALTED"}
    code, out, _ = _cli(
        ["evaluate", "--mode", "TESTNET"],
        capsys,
        (json.dumps(halted) + "\n" + line + "\n").encode(),
    )
    a, b = (json.loads(x) for x in out.splitlines())
    assert a["reasons"] == ["TRADING_HALTED"] and a["context"]["trading_state"] == "HALTED"
    assert b["verdict"] == "PASS" and "trading_state" not in b["context"]
    for bad in ("halted", "", 1, None, "PAUSED"):
        code, out, _ = _cli(
            ["evaluate"],
            capsys,
            (json.dumps(json.loads(line) | {"trading_state": bad}) + "\n").encode(),
        )
        assert code == 1
        assert json.loads(out)["error"].startswith("trading_state: must be one of")
