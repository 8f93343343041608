from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import valid

from core_kernel import cli, consume, streams

CORE_KERNEL = shutil.which("core-kernel", path=str(Path(sys.executable).parent))


def run(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    stdin: str | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> tuple[int, str, str]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def clean_env(no_kernel_env: None) -> None:
    """Every test here starts without the machine's kernel environment (conftest)."""


def env_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "core_gates.env"
    path.write_text(text)
    return str(path)


def test_console_script_installed_and_check_config_exit_2(tmp_path: Path) -> None:
    assert CORE_KERNEL, "core-kernel console script not installed next to the interpreter"
    bad = env_file(tmp_path, "MIN_NOTIONAL_USD=abc\nEDGE_MULTIPLIER=0\nTYPO_KEY=1\n")
    proc = subprocess.run(
        [CORE_KERNEL, "check-config", "--config", bad],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert any(line.startswith("MIN_NOTIONAL_USD=abc:") for line in lines)
    assert any(line.startswith("TYPO_KEY=1: unknown key") for line in lines)
    assert "Traceback" not in proc.stderr
    assert subprocess.run(
        [CORE_KERNEL, "version"], capture_output=True, text=True, check=True
    ).stdout.startswith("core-kernel ")


def test_check_config_ok_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = env_file(tmp_path, "MIN_NOTIONAL_USD=30\nBINANCE_API_SECRET=s3cret\n")
    code, out, _ = run(["check-config", "--config", good], capsys)
    assert code == 0
    assert out.startswith("OK ")
    code, out, _ = run(["check-config", "--config", good, "--json"], capsys)
    data = json.loads(out)
    assert data["ok"] is True
    assert data["config"]["MIN_NOTIONAL_USD"] == "30"
    assert data["config"]["BINANCE_API_SECRET"] == "***"
    code, out, _ = run(["check-config", "--config", str(tmp_path / "nope"), "--json"], capsys)
    assert code == 2
    assert "does not exist" in json.loads(out)["errors"][0]


CANARY = "Canary-Pw-7f3e9"


@pytest.mark.parametrize(
    ("text", "argv_extra"),
    [
        # in a dump of a good config, userinfo and ?password= forms
        (f"CORE_KERNEL_REDIS_URL=redis://:{CANARY}@127.0.0.1:6379/0\n", []),
        (f"CORE_KERNEL_REDIS_URL=redis://kernel:{CANARY}@127.0.0.1:6379/0\n", []),
        (f"CORE_KERNEL_REDIS_URL=unix:///run/redis.sock?db=0&password={CANARY}\n", []),
        (f"REDIS_URL=redis://:{CANARY}@127.0.0.1:6379/0\n", []),
        # in the error for a bad URL or a bad secret value
        (f"CORE_KERNEL_REDIS_URL=redis://:{CANARY}@127.0.0.1:notaport/0\n", []),
        (f"BINANCE_API_SECRET={CANARY} x\nMIN_NOTIONAL_USD=abc\n", []),
        ("", ["--redis-url", f"redis://:{CANARY}@127.0.0.1:99999/0"]),
    ],
)
def test_no_password_or_key_in_any_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, argv_extra: list[str]
) -> None:
    """Issue 12 item 2: a Redis password or an API secret is never echoed, by any command."""
    path = env_file(tmp_path, text)
    for argv in (
        ["check-config", "--config", path, "--json"],
        ["check-config", "--config", path],
        ["state", "--json", "--config", path, *argv_extra],
    ):
        _code, out, err = run(argv, capsys)
        assert CANARY not in out + err, (argv, out, err)


def test_bad_config_elsewhere_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = env_file(tmp_path, "MAX_TRADES_10MIN=-3\n")
    code, _out, err = run(["mode", "--config", bad], capsys)
    assert code == 2
    assert "config error: MAX_TRADES_10MIN=-3" in err


def test_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = env_file(tmp_path, "TRADING_MODE=TESTNET\nBINANCE_TESTNET=true\n")
    code, out, _ = run(["mode", "--config", path], capsys)
    assert code == 0
    assert out.startswith("TESTNET enforce=true may_mutate=true")
    _, out, _ = run(["mode", "--config", path, "--json"], capsys)
    assert json.loads(out)["sources"]["BINANCE_TESTNET"] == "true"


def test_recover_json_and_log(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "rec.log"
    path = env_file(
        tmp_path,
        f"CORE_KERNEL_REDIS_URL={redis_url}\nTRADING_MODE=TESTNET\n"
        f"STREAM_RECOVER_LOG={log}\nSTALE_IDLE_MS=20\n"
        "EXECUTION_CONSUMER=lab:quantum-execution\n",
    )
    streams.ensure_group(redis_client)
    streams.publish_intent_once(redis_client, valid(trace_id="r1"))
    consume.read_new(consume.raw_client(redis_client), "999", block_ms=None, count=10)
    time.sleep(0.05)
    code, out, _ = run(["recover", "--config", path, "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["reclaimed"] == 1
    assert data["consumer"] == "lab:quantum-execution"
    text = log.read_text()
    assert "RECOVER_START" in text
    assert "RECLAIMED batch=1 claimed=1 into=lab:quantum-execution" in text


def test_recover_exit_3_when_redis_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = env_file(
        tmp_path,
        f"CORE_KERNEL_REDIS_URL=redis://127.0.0.1:1/0\nTRADING_MODE=TESTNET\n"
        f"STREAM_RECOVER_LOG={tmp_path / 'r.log'}\n",
    )
    code, out, _ = run(["recover", "--config", path], capsys)
    assert code == 3
    assert json.loads(out)["ok"] is False
    code, out, _ = run(["stream-health", "--config", path], capsys)
    assert code == 3


def test_stream_health(
    redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    streams.ensure_group(redis_client)
    streams.publish_intent_once(redis_client, valid(trace_id="h1"))
    consume.read_new(consume.raw_client(redis_client), "w1", block_ms=None, count=10)
    code, out, _ = run(["stream-health", "--redis-url", redis_url], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["length"] == 1
    [group] = data["groups"]
    assert group["pending"] == 1
    assert group["lag"] == 0
    assert group["consumers_detail"][0]["name"] == "w1"
    assert group["consumers_detail"][0]["pending"] == 1


def test_gate_proof(
    redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.set("unrelated", "1")
    code, out, _ = run(["gate-proof", "--json", "--redis-url", redis_url], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    assert data["passed"] == data["total"] == 15
    names = [c["name"] for c in data["cases"]]
    assert names == [
        "MIN_NOTIONAL",
        "EDGE_TOO_SMALL",
        "COOLDOWN",
        "RATE_LIMIT",
        "R_TOO_LOW_TREND",
        "R_TOO_LOW_RANGE",
        "MODEL_REGIME_MISMATCH",
        "MAX_NOTIONAL",
        "MAX_LEVERAGE",
        "VALID_TRADE",
        "LIVE_AUDIT",
        "INTENT_EXPIRED",
        "TRADING_HALTED",
        "REDUCING_ONLY",
        "MALFORMED_INPUT",
    ]
    assert redis_client.keys("*") == ["unrelated"]  # isolated keys, cleaned up
    code, out, _ = run(["gate-proof", "--redis-url", redis_url], capsys)
    assert "GATE PROOF: 15/15" in out


def test_gate_proof_fails_when_a_gate_is_disabled(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = env_file(tmp_path, "MIN_NOTIONAL_USD=0\n")
    code, out, _ = run(["gate-proof", "--config", path, "--redis-url", redis_url], capsys)
    assert code == 1
    assert "MIN_NOTIONAL" in out and "FAIL" in out


LINE_OK = json.dumps(
    {
        "symbol": "ETHUSDT",
        "side": "BUY",
        "qty": 0.01,
        "price": 3500,
        "expected_move_usd": 250,
        "tp": 3587.5,
        "sl": 3465,
        "model": "NHiTS",
        "regime": "TREND",
    }
)


def test_evaluate_what_if(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cooldown = json.loads(LINE_OK) | {"seconds_since_last_trade": 10, "trades_last_10min": 3}
    exit_line = json.loads(LINE_OK) | {"reduce_only": True, "seconds_since_last_trade": 1}
    stdin = (
        "\n".join(
            [
                LINE_OK,
                json.dumps(cooldown),
                "{not json",
                '{"qtyy": 1}',
                json.dumps(exit_line),
                '{"seconds_since_last_trade": "x"}',
            ]
        )
        + "\n"
    )
    code, out, err = run(["evaluate", "--mode", "TESTNET"], capsys, stdin, monkeypatch)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert rows[0]["verdict"] == "PASS" and rows[0]["enforced"] is True
    assert rows[1]["reasons"] == ["COOLDOWN", "RATE_LIMIT"]
    assert rows[1]["primary"] == "COOLDOWN"
    assert rows[2]["line"] == 3 and rows[2]["error"].startswith("bad JSON")
    assert rows[3]["verdict"] == "HOLD"
    assert rows[3]["context"]["invalid_fields"]["qtyy"] == "unknown field"
    assert rows[4]["verdict"] == "PASS"
    assert "seconds_since_last_trade" in rows[5]["error"]
    assert "Traceback" not in err
    code, out, _ = run(
        ["evaluate", "--mode", "live"], capsys, json.dumps(cooldown) + "\n", monkeypatch
    )
    row = json.loads(out)
    assert (row["verdict"], row["enforced"], row["mode"]) == ("PASS", False, "LIVE")


def test_evaluate_reads_state_from_redis(
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_client.set("quantum:kernel:last_trade:ETHUSDT", int(time.time() * 1000))
    code, out, _ = run(
        ["evaluate", "--mode", "TESTNET", "--redis-url", redis_url],
        capsys,
        LINE_OK + "\n",
        monkeypatch,
    )
    assert code == 0
    assert json.loads(out)["reasons"] == ["COOLDOWN"]
    assert redis_client.dbsize() == 1  # read-only


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--mode", "PAPER"])


def test_stream_health_flags_zombies_and_missing_group(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["stream-health", "--redis-url", redis_url], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["exists"] is False
    assert data["healthy"] is False
    streams.ensure_group(redis_client)
    redis_client.xgroup_createconsumer(streams.STREAM, streams.GROUP, "old-pid-123")
    time.sleep(0.03)
    path = env_file(tmp_path, "ZOMBIE_IDLE_MS=10\n")
    code, out, _ = run(["stream-health", "--config", path, "--redis-url", redis_url], capsys)
    data = json.loads(out)
    assert data["groups"][0]["zombies"] == ["old-pid-123"]
    assert data["healthy"] is False


def test_evaluate_with_unreachable_redis_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(
        ["evaluate", "--redis-url", "redis://127.0.0.1:1/0"], capsys, LINE_OK + "\n", monkeypatch
    )
    assert code == 3
    assert "redis unreachable" in err


# --- no traceback, ever; every surface has a deadline ---------------------------------------------
def _cli(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator (or systemd) runs it."""
    assert CORE_KERNEL is not None
    proc = subprocess.run(
        [CORE_KERNEL, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CORE_GATES_ENV": "", "LC_ALL": "C.UTF-8"},
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["recover", "--redis-url", "not-a-url"], 2, "--redis-url=not-a-url"),
        (["stream-health", "--redis-url", "redis://127.0.0.1:notaport/0"], 2, "notaport"),
        (["gate-proof", "--redis-url", "redis://127.0.0.1:99999/0"], 2, "99999"),
        (["evaluate", "--redis-url", "redis://h o/0"], 2, "whitespace"),
        (["recover", "--redis-url", "redis://127.0.0.1:1/0"], 3, "redis unreachable"),
        (["mode", "--config", "/nonexistent/x.env"], 2, "does not exist"),
        (["check-config", "--config", "/"], 2, "not a regular file"),
        (["evaluate", "--timeout", "abc"], 2, "not a number of seconds"),
    ],
)
def test_cli_failures_are_one_line_and_a_documented_exit_code(
    args: list[str], code: int, needle: str
) -> None:
    proc = _cli(*args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    both = proc.stdout + proc.stderr
    assert needle in both and "Traceback" not in both


def test_fifo_as_config_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "core_gates.env"
    os.mkfifo(fifo)
    proc = _cli("check-config", "--config", str(fifo), timeout=20)
    assert proc.returncode == 2
    assert "not a regular file" in proc.stdout and "Traceback" not in proc.stderr


def test_recover_with_a_full_log_device_still_sweeps_and_reports(redis_url: str) -> None:
    proc = _cli("recover", "--log", "/dev/full", "--redis-url", redis_url)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True
    assert "/dev/full" in summary["log_error"]
    assert "Traceback" not in proc.stderr and "RECOVER" in proc.stderr  # events went to stderr


def test_evaluate_reads_stdin_as_bytes_and_keeps_later_lines() -> None:
    bad = LINE_OK.encode().replace(b"USDT", b"US\xffDT", 1)
    assert bad != LINE_OK.encode()
    stdin = b"\n".join([bad, b"\xff\xfe", b"[" * 5000, LINE_OK.encode()]) + b"\n"
    proc = _cli("evaluate", "--mode", "TESTNET", stdin=stdin)
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert "not UTF-8" in rows[0]["error"] and "not UTF-8" in rows[1]["error"]
    assert "nested too deeply" in rows[2]["error"]
    assert rows[3]["verdict"] == "PASS"


def test_evaluate_with_a_stalled_redis_answers_hold_in_bounded_time(
    redis_server: Any, tmp_path: Path
) -> None:
    """SIGSTOP the real redis-server: each line waits at most --timeout, and after --deadline
    no line waits at all; every answer is HOLD STATE_UNAVAILABLE."""
    assert redis_server.proc is not None
    lines = (LINE_OK + "\n").encode() * 20
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        proc = _cli(
            "evaluate",
            "--mode",
            "TESTNET",
            "--redis-url",
            redis_server.url,
            "--timeout",
            "0.3",
            "--deadline",
            "1",
            stdin=lines,
        )
        elapsed = time.monotonic() - start
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert len(rows) == 20
    assert all((r["verdict"], r["reasons"]) == ("HOLD", ["STATE_UNAVAILABLE"]) for r in rows)
    assert any("deadline" in r["context"].get("state_error", "") for r in rows)
    # ping (0.3) + a few lines of 0.3 until the 1 s deadline, then none: far below 20 x 0.3 s
    assert elapsed < 5, elapsed


def test_check_config_builds_what_the_services_build(tmp_path: Path) -> None:
    # Each value is within its own bounds; together gate-proof could not build its cases.
    path = env_file(
        tmp_path, "MIN_NOTIONAL_USD=999999999999999\nEDGE_MULTIPLIER=1000000000000000\n"
    )
    proc = _cli("check-config", "--config", path)
    assert proc.returncode == 2 and "cannot be computed exactly" in proc.stdout
    proc = _cli("gate-proof", "--config", path, "--redis-url", "redis://127.0.0.1:1/0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["stream-health"], ["state", "--json"], ["gate-proof"]])
def test_refused_credentials_are_auth_failed_not_unreachable(
    redis_url: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A wrong password is not an outage: the answer says so, without the password."""
    url = redis_url.replace("redis://", f"redis://nobody-{CANARY[:6]}:{CANARY}@")
    code, out, err = run([*command, "--redis-url", url], capsys)
    assert code == 3, (out, err)
    assert "auth failed" in out + err, (out, err)
    assert "unreachable" not in out + err, (out, err)
    assert CANARY not in out + err


def test_redis_url_from_stdin_keeps_the_password_off_the_command_line(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(
        ["stream-health", "--redis-url", "-"],
        capsys,
        stdin=redis_url + "\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0 and json.loads(out)["stream"], out
    code, _, err = run(
        ["stream-health", "--redis-url", "-"], capsys, stdin="", monkeypatch=monkeypatch
    )
    assert code == 2 and "no URL on stdin" in err
    code, _, err = run(
        ["evaluate", "--redis-url", "-"], capsys, stdin="{}\n", monkeypatch=monkeypatch
    )
    assert code == 2 and "evaluate reads its intents on stdin" in err
