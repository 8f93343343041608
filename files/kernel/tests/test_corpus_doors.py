"""The malformed-input corpus (tests/corpus.py) through every door: the same verdict, the same
reasons and the same named fields on each, never PASS in any mode, never a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from corpus import (
    BASE,
    ConfigCase,
    StateCase,
    all_counts,
    config_cases,
    intent_cases,
    raw_cases,
    state_cases,
)
from helpers import config

from core_kernel import cli, profit_gate_kernel, router, streams
from core_kernel.config import load_service_config
from core_kernel.intent import IntentError
from core_kernel.mode import TradingMode, report_for
from core_kernel.store import KernelStore

INTENTS = intent_cases()
RAWS = raw_cases()
STATES = state_cases()
CONFIGS = config_cases()
MODES = [TradingMode.TESTNET, TradingMode.LIVE]
ALL_MODES = list(TradingMode)


def test_the_corpus_is_large_enough() -> None:
    counts = all_counts()
    assert sum(counts.values()) >= 300, counts
    assert len({c.name for c in INTENTS}) == len(INTENTS)  # every case named once


class _Stdin:
    """A stdin whose ``buffer`` yields bytes, as the CLI reads it."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def _evaluate(
    lines: list[bytes], mode: TradingMode, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[dict[str, Any]], str]:
    # UNKNOWN is what the CLI detects when no mode is configured (tests run without one).
    mode_args = [] if mode is TradingMode.UNKNOWN else ["--mode", mode.value]
    code = cli.main(["evaluate", *mode_args, *extra], stdin=_Stdin(b"\n".join(lines) + b"\n"))
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.splitlines()]
    assert all(r.get("mode", mode.value) == mode.value for r in rows)
    return code, rows, err


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_intent_case_holds_invalid_input_on_every_door(
    mode: TradingMode, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows, err = _evaluate([c.text.encode() for c in INTENTS], mode, capsys)
    assert code == 0 and err == "", err  # decisions, not line errors: every one parsed as JSON
    assert len(rows) == len(INTENTS)
    store = KernelStore(redis_client, config(), mode)
    profit_gate_kernel.configure(config(), redis_client, report_for(mode))
    seen_doors = {"evaluate": 0, "profit_gate": 0, "admit": 0, "publish": 0, "stream": 0}
    for case, row in zip(INTENTS, rows, strict=True):
        expected = set(case.invalid)
        # 1. core-kernel evaluate
        assert (row["verdict"], row["reasons"]) == ("HOLD", ["INVALID_INPUT"]), case.name
        assert set(row["context"]["invalid_fields"]) == expected, case.name
        seen_doors["evaluate"] += 1
        # 2. the seed API
        kwargs = case.seed_kwargs()
        if kwargs is not None:
            verdict, reason, ctx = profit_gate_kernel.profit_gate(**kwargs)
            assert (verdict.value, reason.value) == ("HOLD", "INVALID_INPUT"), case.name
            assert set(ctx["invalid_fields"]) == expected, case.name
            seen_doors["profit_gate"] += 1
        # 3. store.admit (the mapping door)
        d = store.admit_mapping(case.data())
        assert (d.verdict.value, d.codes) == ("HOLD", ["INVALID_INPUT"]), case.name
        assert set(d.context["invalid_fields"]) == expected, case.name
        seen_doors["admit"] += 1
        # 4. router publish: refused with the same fields, nothing on the stream
        with pytest.raises(IntentError) as info:
            streams.publish_intent_once(redis_client, case.data())
        assert set(info.value.invalid) == expected, case.name
        assert router.publish_text(redis_client, case.text).startswith("error:")
        seen_doors["publish"] += 1
        # 5. a stream entry as the worker reads it (bytes)
        raw = case.stream_fields()
        if raw is not None:
            _, d = store.admit_entry(raw, "1-0")
            assert (d.verdict.value, d.codes) == ("HOLD", ["INVALID_INPUT"]), case.name
            assert set(d.context["invalid_fields"]) == expected, case.name
            seen_doors["stream"] += 1
    assert redis_client.exists(streams.STREAM) == 0
    assert redis_client.keys("quantum:kernel:*") == []  # no trade recorded for any of them
    assert min(seen_doors.values()) >= 100, seen_doors


@pytest.mark.parametrize("mode", ALL_MODES)
def test_raw_lines_are_one_line_errors_never_pass(
    mode: TradingMode, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [c.line.replace(b"\n", b" ") for c in RAWS] + [json.dumps(BASE).encode()]
    code, rows, err = _evaluate(lines, mode, capsys)
    assert code == 1 and err == ""
    assert len(rows) == len(lines)  # one answer per line, later lines not lost
    for case, row in zip(RAWS, rows, strict=False):
        assert row.get("verdict") != "PASS", case.name
        if "error" in row:
            assert "\n" not in row["error"] and "Traceback" not in row["error"], case.name
        else:
            assert row["reasons"] == ["INVALID_INPUT"], case.name
    assert rows[-1]["verdict"] == "PASS"  # the valid line after all of them still judged
    for case in RAWS:
        assert router.publish_text(redis_client, case.line).startswith("error:"), case.name
    assert redis_client.exists(streams.STREAM) == 0


def _dump(client: redis.Redis, key: str) -> Any:
    return client.dump(key)


@pytest.mark.parametrize("case", STATES, ids=[c.name for c in STATES])
@pytest.mark.parametrize("mode", MODES)
def test_corrupted_state_is_the_same_hold_on_every_door(
    case: StateCase,
    mode: TradingMode,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    raw_client = redis.Redis.from_url(redis_url)
    case.setup(raw_client, case.key)
    before = _dump(raw_client, case.key)
    store = KernelStore(client, config(), mode)
    fields = {k.encode(): v.encode() for k, v in BASE.items()}
    entry_id = f"{store.server_time_ms()}-0"
    doors = {
        "admit": lambda: store.admit_mapping(dict(BASE)),
        "stream": lambda: store.admit_entry(fields, entry_id)[1],
        "stream-bytes-client": lambda: KernelStore(raw_client, config(), mode).admit_entry(
            fields, entry_id
        )[1],
    }
    for name, door in doors.items():
        d = door()
        assert (d.verdict.value, d.codes) == ("HOLD", [case.reason]), (case.name, name)
        assert d.context["state_key"] == case.key, (case.name, name)
        if case.detail:
            assert d.context["state_error"] == case.detail, (case.name, name)
    if case.reason == "STATE_UNAVAILABLE":
        # the read-only doors read the same keys through the same script
        d = store.evaluate(store_intent())
        assert (d.verdict.value, d.codes, d.context["state_key"]) == (
            "HOLD",
            ["STATE_UNAVAILABLE"],
            case.key,
        )
        profit_gate_kernel.configure(config(), client, report_for(mode))
        verdict, reason, ctx = profit_gate_kernel.profit_gate(**BASE)
        assert (verdict.value, reason.value, ctx["state_key"]) == (
            "HOLD",
            "STATE_UNAVAILABLE",
            case.key,
        )
        assert profit_gate_kernel.record_trade("ETHUSDT") is False
        code, rows, err = _evaluate(
            [json.dumps(BASE).encode()], mode, capsys, "--redis-url", redis_url
        )
        assert code == 0 and err == ""
        assert (rows[0]["verdict"], rows[0]["reasons"]) == ("HOLD", ["STATE_UNAVAILABLE"])
        assert rows[0]["context"]["state_key"] == case.key
    assert _dump(raw_client, case.key) == before  # nothing overwrote what the kernel did not write
    assert raw_client.exists(streams.STREAM) == 0
    client.close()
    raw_client.close()


def store_intent() -> Any:
    from core_kernel.intent import parse_intent  # noqa: PLC0415

    return parse_intent(BASE)


@pytest.mark.parametrize("case", CONFIGS, ids=[c.name for c in CONFIGS])
def test_bad_config_refused_by_check_config_and_every_service_start(
    case: ConfigCase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_kernel_env: None,
) -> None:
    path = tmp_path / "core_gates.env"
    path.write_text(f"{case.key}={case.value}\n", encoding="utf-8")
    code = cli.main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, (case.name, out)
    assert case.key in out and "Traceback" not in out + err
    assert all(line.count("\n") == 0 for line in out.splitlines())
    stream = io.StringIO()
    assert load_service_config(path, stream) is None  # worker / router refuse to start
    assert case.key in stream.getvalue()
    code = cli.main(["gate-proof", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and case.key in err and "Traceback" not in out + err
