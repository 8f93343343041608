"""Redis Sentinel (issue 15 item 1): the config keys, and every kernel client against a real
Sentinel setup (one primary, one replica, three sentinels on loopback; tests/sentinel_lab.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sentinel_lab import DATA_PASSWORD, MASTER, SENTINEL_PASSWORD, SentinelLab

from core_kernel import cli, consume, inflight, protect, recovery, streams, worker
from core_kernel.config import ConfigError, KernelConfig, load_config
from core_kernel.consume import StreamEntry
from core_kernel.intent import parse_intent
from core_kernel.lease import OrderLease
from core_kernel.mode import TradingMode, report_for
from core_kernel.redis_client import make_client, target_from_config
from core_kernel.store import KernelStore
from core_kernel.trading_state import TradingState, set_state, state_key

LUA_DIR = Path(__file__).resolve().parents[1] / "src" / "core_kernel" / "lua"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelLab]:
    """Module-scoped: the failover test is last in this file and leaves the replica as master."""
    started = SentinelLab(tmp_path_factory.mktemp("sentinel")).start()
    yield started
    started.stop()


def _config(lab: SentinelLab, **extra: str) -> KernelConfig:
    env = {**lab.env(), "TRADING_MODE": "TESTNET", **extra}
    return load_config(environ=env)


def _errors(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    return info.value.errors


# --- config: every bad value is one line naming the key; secrets never shown -------------------
GOOD = {
    "CORE_KERNEL_REDIS_SENTINELS": "10.0.0.5:26379,sentinel-b:26379,[::1]:26380",
    "CORE_KERNEL_REDIS_SENTINEL_MASTER": "kernel",
}


def test_sentinel_keys_parse(no_kernel_env: None) -> None:
    cfg = load_config(environ={**GOOD, "CORE_KERNEL_REDIS_DB": "3"})
    target = target_from_config(cfg)
    assert target.sentinels == (("10.0.0.5", 26379), ("sentinel-b", 26379), ("::1", 26380))
    assert target.master == "kernel" and target.db == 3
    assert "26379" in target.describe() and "kernel" in target.describe()
    # the application's REDIS_URL is not a fallback in Sentinel mode (it is not an error either:
    # the application's env file is read by the same services)
    cfg = load_config(environ={**GOOD, "REDIS_URL": "redis://app:6379/0"})
    assert target_from_config(cfg).is_sentinel


@pytest.mark.parametrize(
    ("env", "key", "reason"),
    [
        ({"CORE_KERNEL_REDIS_SENTINELS": "10.0.0.5"}, "CORE_KERNEL_REDIS_SENTINELS", "host:port"),
        ({"CORE_KERNEL_REDIS_SENTINELS": "a:0"}, "CORE_KERNEL_REDIS_SENTINELS", "1..65535"),
        ({"CORE_KERNEL_REDIS_SENTINELS": "a:1,a:1"}, "CORE_KERNEL_REDIS_SENTINELS", "twice"),
        ({"CORE_KERNEL_REDIS_SENTINELS": "a b:1"}, "CORE_KERNEL_REDIS_SENTINELS", "whitespace"),
        ({"CORE_KERNEL_REDIS_SENTINELS": "[zz]:1"}, "CORE_KERNEL_REDIS_SENTINELS", "IPv6"),
        (
            {"CORE_KERNEL_REDIS_SENTINELS": ",".join(f"h:{p}" for p in range(1, 18))},
            "CORE_KERNEL_REDIS_SENTINELS",
            "more than 16",
        ),
        ({"CORE_KERNEL_REDIS_SENTINELS": "a:1"}, "CORE_KERNEL_REDIS_SENTINEL_MASTER", "required"),
        ({**GOOD, "CORE_KERNEL_REDIS_DB": "x"}, "CORE_KERNEL_REDIS_DB", "integer"),
        ({**GOOD, "CORE_KERNEL_REDIS_DB": "100000"}, "CORE_KERNEL_REDIS_DB", "99999"),
        (
            {**GOOD, "CORE_KERNEL_REDIS_URL": "redis://h:6379/0"},
            "CORE_KERNEL_REDIS_URL",
            "remove one",
        ),
        (
            {"CORE_KERNEL_REDIS_PASSWORD": "pw", "CORE_KERNEL_REDIS_URL": "redis://:x@h:6379/0"},
            "CORE_KERNEL_REDIS_PASSWORD",
            "in one place",
        ),
        ({"CORE_KERNEL_REDIS_DB": "2"}, "CORE_KERNEL_REDIS_DB", "only used with"),
        (
            {**GOOD, "CORE_KERNEL_REDIS_USERNAME": "kern"},
            "CORE_KERNEL_REDIS_USERNAME",
            "without CORE_KERNEL_REDIS_PASSWORD",
        ),
        (
            {**GOOD, "CORE_KERNEL_REDIS_SENTINEL_MASTER": "two words"},
            "CORE_KERNEL_REDIS_SENTINEL_MASTER",
            "whitespace",
        ),
    ],
)
def test_bad_sentinel_values_are_one_line_each(
    no_kernel_env: None, env: dict[str, str], key: str, reason: str
) -> None:
    errors = _errors(env)
    assert len(errors) == 1, errors
    assert key in errors[0] and reason in errors[0], errors


def test_passwords_never_shown(no_kernel_env: None, tmp_path: Path) -> None:
    secret = "S3cr3t-never-shown"
    env = {**GOOD, "CORE_KERNEL_REDIS_PASSWORD": f"bad {secret}"}
    env["CORE_KERNEL_REDIS_SENTINEL_PASSWORD"] = f"bad\t{secret}"
    errors = _errors(env)
    assert len(errors) == 2 and all("whitespace" in e for e in errors), errors
    assert secret not in "\n".join(errors)
    # check-config --json of a good Sentinel config masks both passwords
    envfile = tmp_path / "core_gates.env"
    envfile.write_text(
        "".join(f"{k}={v}\n" for k, v in GOOD.items())
        + f"CORE_KERNEL_REDIS_PASSWORD={secret}\nCORE_KERNEL_REDIS_SENTINEL_PASSWORD={secret}\n",
        encoding="utf-8",
    )
    out = io.StringIO()
    code = cli.cmd_check_config(
        cli.build_parser().parse_args(["check-config", "--json", "--config", str(envfile)]),
        out,
        io.StringIO(),
    )
    assert code == 0, out.getvalue()
    dump = json.loads(out.getvalue())["config"]
    assert (
        dump["CORE_KERNEL_REDIS_PASSWORD"] == dump["CORE_KERNEL_REDIS_SENTINEL_PASSWORD"] == "***"
    )
    assert secret not in out.getvalue()
    assert secret not in repr(load_config(envfile, environ={}))
    assert secret not in repr(target_from_config(load_config(envfile, environ={})))


# --- real Sentinel ---------------------------------------------------------------------------
def test_clients_resolve_the_master_with_credentials(no_kernel_env: None, lab: SentinelLab) -> None:
    cfg = _config(lab)
    client = make_client(cfg)
    raw = consume.raw_client(client)
    try:
        assert client.set("quantum:test:sentinel", "é") is True
        assert client.get("quantum:test:sentinel") == "é"  # decoded
        assert raw.get("quantum:test:sentinel") == "é".encode()  # bytes, same master
        port = int(client.connection_pool.get_master_address()[1])  # type: ignore[attr-defined]
        assert port == lab.primary.port == lab.master_port()
    finally:
        client.close()
        raw.close()
    # an ACL user on the master (CORE_KERNEL_REDIS_USERNAME): AUTH user password
    lab.primary.client().acl_setuser(
        "kern", enabled=True, passwords=["+kern-pw-1"], keys=["*"], commands=["+@all"]
    )
    acl = make_client(
        _config(lab, CORE_KERNEL_REDIS_USERNAME="kern", CORE_KERNEL_REDIS_PASSWORD="kern-pw-1")
    )
    assert acl.acl_whoami() == "kern"
    acl.close()
    # wrong data password: an auth failure the services report as such, not an outage
    bad = make_client(_config(lab, CORE_KERNEL_REDIS_PASSWORD="wrong"))
    with pytest.raises(redis.AuthenticationError):
        bad.ping()
    # wrong sentinel password: no sentinel answers, so no master; the message has no secret
    bad = make_client(_config(lab, CORE_KERNEL_REDIS_SENTINEL_PASSWORD="wrong-sentinel-pw"))
    with pytest.raises(redis.ConnectionError) as info:
        bad.ping()
    assert "wrong-sentinel-pw" not in str(info.value)
    assert DATA_PASSWORD not in str(info.value) and SENTINEL_PASSWORD not in str(info.value)


def test_cli_reaches_the_master_through_sentinels(
    no_kernel_env: None,
    lab: SentinelLab,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in {**lab.env(), "TRADING_MODE": "TESTNET"}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["halt", "--reason", "sentinel test", "--json"]) == 0
    primary = lab.primary.client(decode_responses=True)
    assert primary.hget(state_key(), "state") == "HALTED"  # written on the master
    assert cli.main(["state", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"HALTED"' in out
    assert cli.main(["resume", "--reason", "sentinel test", "--json"]) == 0
    assert cli.main(["recover", "--json", "--log", os.devnull]) == 0
    captured = capsys.readouterr()
    assert DATA_PASSWORD not in captured.out + captured.err
    assert SENTINEL_PASSWORD not in captured.out + captured.err
    # a sentinel list where nothing answers: exit 3, one line, no secret
    monkeypatch.setenv("CORE_KERNEL_REDIS_SENTINELS", "127.0.0.1:1")
    assert cli.main(["state"]) == cli.EXIT_REDIS_DOWN
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "No master found" in err, err
    assert DATA_PASSWORD not in err and SENTINEL_PASSWORD not in err


INTENT = {
    "symbol": "ETHUSDT",
    "side": "BUY",
    "qty": "0.1",
    "price": "3000",
    "expected_move_usd": "100",
    "tp": "3060",
    "sl": "2980",
    "model": "NHiTS",
    "regime": "TREND",
    "leverage": "2",
}


def test_seed_api_and_router_through_sentinels(
    no_kernel_env: None, lab: SentinelLab, tmp_path: Path
) -> None:
    from core_kernel import profit_gate_kernel  # noqa: PLC0415 - loads the env at import

    cfg = _config(lab)
    profit_gate_kernel.configure(config=cfg)  # the module makes its own client from the config
    try:
        verdict, reason, _ctx = profit_gate_kernel.profit_gate(**INTENT, trace_id="seed-1")
        assert (verdict.value, reason.value) == ("PASS", "PASS")
        assert profit_gate_kernel.record_trade("ETHUSDT") >= 1
    finally:
        profit_gate_kernel.configure(config=load_config(environ={}))
    primary = lab.primary.client(decode_responses=True)
    assert primary.exists("quantum:kernel:last_trade:ETHUSDT") == 1
    # the reference router as a process, its env file naming only the sentinels
    envfile = tmp_path / "core_gates.env"
    envfile.write_text("".join(f"{k}={v}\n" for k, v in lab.env().items()), encoding="utf-8")
    envfile.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORE_", "REDIS_URL"))}
    env["CORE_GATES_ENV"] = str(envfile)
    line = json.dumps({**INTENT, "trace_id": "router-1"})
    proc = subprocess.run(
        [sys.executable, "-m", "core_kernel.router", "publish", "-"],
        input=line.encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["published"] == 1
    assert primary.exists(streams.intent_dedup_key("router-1")) == 1
    for secret in lab.secrets():
        assert secret.encode() not in proc.stdout + proc.stderr


def _inline_scripts() -> dict[str, str]:
    """Every script the kernel runs: the lua/ files (admit as the store renders it) and the
    two defined in Python."""
    return {
        "publish_result": worker._PUBLISH_RESULT_LUA,
        "inflight_release": inflight._RELEASE_LUA,
    }


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _run_every_script(client: redis.Redis, raw: redis.Redis, cfg: KernelConfig, n: int) -> None:
    """Every kernel script through the kernel's own functions, on ``client``'s master."""
    mode = report_for(TradingMode.TESTNET)
    store = KernelStore(client, cfg, mode)
    streams.ensure_group(client)
    data = {
        "trace_id": f"sentinel-{n}",
        "symbol": "BTCUSDT",
        "side": "BUY",
        "qty": "0.01",
        "price": "60000",
        "expected_move_usd": "100",
        "tp": "61200",
        "sl": "59600",
        "model": "NHiTS",
        "regime": "TREND",
        "leverage": "2",
    }
    intent = parse_intent(data, require_trace_id=True)
    assert streams.publish_intent_once(client, intent) is not None  # publish_once
    store.admit(intent)  # admit (the store's own EVALSHA + SCRIPT LOAD on NOSCRIPT)
    store.record_trade("BTCUSDT")  # record_trade
    set_state(client, TradingState.HALTED, "sentinel test")  # set_trading_state
    protect.resume(client, "sentinel test")  # protection
    lease = OrderLease(client, ttl_ms=30000, min_remaining_ms=1000)
    assert lease.acquire(f"cid-{n}").name == "FRESH"  # lease_acquire
    assert lease.renew(f"cid-{n}")  # lease_renew
    assert lease.release(f"cid-{n}")  # lease_release
    worker.publish_result_once(client, f"sentinel-{n}", {"status": "test"})  # publish_result
    inflight.release(client, "quantum:test:inflight", "quantum:test:exp", "BTCUSDT", "t", None)
    # a stale entry of a dead consumer: recover claims it (recover_batch) and deletes the empty
    # consumer (delete_zombie); the worker's dead letter takes it off (dead_letter)
    dead = f"dead-host-{n}:quantum-execution"
    raw.xreadgroup(streams.GROUP, dead, {streams.STREAM: ">"}, count=10)
    rcfg = load_config(
        environ={
            **{k: v for k, v in os.environ.items() if k.startswith("CORE_KERNEL_REDIS_")},
            "TRADING_MODE": "TESTNET",
            "STALE_IDLE_MS": "1",
            "ZOMBIE_IDLE_MS": "1",
            "EXECUTION_CONSUMER": "sentinel-test:quantum-execution",
            "MAX_INTENT_AGE_MS": "600000",
        }
    )
    summary = recovery.recover(client, rcfg, mode, lambda event, fields: None)
    assert summary.ok, summary
    mine = consume.read_own_pending(raw, "sentinel-test:quantum-execution", count=10)
    assert mine, "recover claimed nothing"
    for entry in mine:
        assert consume.dead_letter(raw, StreamEntry(entry.id, entry.fields, 9), "test", {})


def test_failover_is_followed_and_every_script_survives_noscript(
    no_kernel_env: None, lab: SentinelLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    cfg = _config(lab)
    client = make_client(cfg, socket_timeout=2, socket_connect_timeout=1)
    raw = consume.raw_client(client)
    store_src = KernelStore(client, cfg, report_for(TradingMode.TESTNET))._admit_src
    shas = {name.name: _sha(name.read_text(encoding="utf-8")) for name in LUA_DIR.glob("*.lua")}
    shas["admit.lua"] = _sha(store_src)
    shas.update({name: _sha(src) for name, src in _inline_scripts().items()})
    _run_every_script(client, raw, cfg, 1)
    old = lab.primary.client()
    assert all(old.script_exists(*shas.values())), "not every script ran on the primary"

    lab.kill_primary()
    lab.wait_promoted()
    promoted = lab.replica.client()
    # Redis 7 does not replicate SCRIPT LOAD; flush anyway so the test cannot pass on a cache
    promoted.script_flush()
    assert not any(promoted.script_exists(*shas.values()))
    # the same client objects, no reconnect by hand: the first calls may meet the dead primary
    for attempt in range(60):
        try:
            client.ping()
            raw.ping()
            break
        except redis.ConnectionError:
            assert attempt < 59
    _run_every_script(client, raw, cfg, 2)
    exists = promoted.script_exists(*shas.values())
    missing = [name for name, ok in zip(shas, exists, strict=True) if not ok]
    assert missing == [], f"not run on the promoted replica: {missing}"
    assert int(client.connection_pool.get_master_address()[1]) == lab.replica.port  # type: ignore[attr-defined]
    assert MASTER == "kernel"
    client.close()
    raw.close()
