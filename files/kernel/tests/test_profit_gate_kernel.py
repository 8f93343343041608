"""The seed API, including the activation report's integration snippet executed as written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from corpus import SEED_KWARGS
from helpers import config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_kernel import profit_gate_kernel as pgk
from core_kernel.gates import GateVerdict, Reason
from core_kernel.mode import TradingMode, report_for

HERE = Path(__file__).resolve().parent
SNIPPET = HERE / "data" / "seed_next_steps_1.py.txt"
SHIM = HERE.parent / "shim" / "profit_gate_kernel.py"

DRIVER = r"""
import asyncio, json, logging, sys, textwrap, types

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
snippet = open(sys.argv[1], encoding="utf-8").read()
case = json.loads(sys.argv[2])

# Two adaptations, nothing else: (1) the snippet is the body of execute_order_from_intent()
# (it uses await and return), so it is wrapped in that async function; (2) the bare `...`
# placeholder line inside ExecutionResult(...) is dropped - after keyword arguments it is a
# SyntaxError in Python. The trailing `...` statement stays.
lines = snippet.splitlines()
placeholder = [i for i, l in enumerate(lines) if l == "        ..."]
assert len(placeholder) == 1, placeholder
del lines[placeholder[0]]
source = (
    "async def execute_order_from_intent(intent, quantity, trace_id, eventbus,"
    " ExecutionResult, logger):\n"
    + textwrap.indent("\n".join(lines), "    ")
    + "\n    PLACED.append(trace_id)\n"
)

class ExecutionResult:
    def __init__(self, **kw):
        self.__dict__.update(kw)

class FakeEventBus:
    def __init__(self):
        self.published = []
    async def publish_execution(self, result):
        self.published.append(dict(result.__dict__))

placed = []
ns = {"PLACED": placed}
exec(compile(source, "seed_next_steps_1", "exec"), ns)
intent = types.SimpleNamespace(**case["intent"])
bus = FakeEventBus()
asyncio.run(ns["execute_order_from_intent"](
    intent, case["quantity"], case["trace_id"], bus, ExecutionResult,
    logging.getLogger("execution")))
print(json.dumps({"placed": placed, "published": bus.published}))
"""

INTENT = {
    "symbol": "ETHUSDT",
    "side": "BUY",
    "entry_price": 3500.0,
    "position_size_usd": 35.0,  # expected move = 35 * 0.02 = 0.70 >= 3 x 0.22 % of 35
    "take_profit": 3587.5,
    "stop_loss": 3465.0,
    "model_name": "NHiTS",
    "regime": "TREND",
    "leverage": 5,
}


@pytest.fixture
def app_tree(tmp_path: Path, redis_url: str) -> tuple[Path, dict[str, str]]:
    services = tmp_path / "app" / "services"
    services.mkdir(parents=True)
    (services / "__init__.py").write_text("")
    shutil.copy(SHIM, services / "profit_gate_kernel.py")
    env_file = tmp_path / "core_gates.env"
    env_file.write_text(
        f"CORE_KERNEL_REDIS_URL={redis_url}\nTRADING_MODE=TESTNET\nBINANCE_TESTNET=true\n"
        "USE_BINANCE_TESTNET=true\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "TRADING_MODE",
            "BINANCE_TESTNET",
            "USE_BINANCE_TESTNET",
            "REDIS_URL",
            "CORE_KERNEL_REDIS_URL",
        }
    }
    env["CORE_GATES_ENV"] = str(env_file)
    env["PYTHONPATH"] = str(tmp_path / "app")
    return tmp_path, env


def run_snippet(env: dict[str, str], tmp: Path, case: dict[str, object]) -> tuple[dict, str]:
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), str(SNIPPET), json.dumps(case)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_seed_snippet_pass(
    app_tree: tuple[Path, dict[str, str]], redis_client: redis.Redis
) -> None:
    tmp, env = app_tree
    out, log = run_snippet(env, tmp, {"intent": INTENT, "quantity": 0.01, "trace_id": "seed-1"})
    assert out == {"placed": ["seed-1"], "published": []}
    # record_trade(intent.symbol) reached the Redis named in the env file
    assert redis_client.exists("quantum:kernel:last_trade:ETHUSDT")
    assert "GATE_PASS trace_id=seed-1" in log


def test_seed_snippet_hold(
    app_tree: tuple[Path, dict[str, str]], redis_client: redis.Redis
) -> None:
    tmp, env = app_tree
    out, log = run_snippet(env, tmp, {"intent": INTENT, "quantity": 0.001, "trace_id": "seed-2"})
    assert out["placed"] == []
    assert out["published"] == [
        {
            "symbol": "ETHUSDT",
            "action": "BUY",
            "status": "gate_blocked",
            "order_id": "BLOCKED_MIN_NOTIONAL",
        }
    ]
    assert "GATE_BLOCKED: MIN_NOTIONAL" in log
    assert not redis_client.exists("quantum:kernel:last_trade:ETHUSDT")


def test_bad_config_makes_the_import_fail(app_tree: tuple[Path, dict[str, str]]) -> None:
    _tmp, env = app_tree
    Path(env["CORE_GATES_ENV"]).write_text("MIN_NOTIONAL_USD=lots\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import services.profit_gate_kernel"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "MIN_NOTIONAL_USD=lots" in proc.stderr


def test_profit_gate_in_process(redis_client: redis.Redis) -> None:
    pgk.configure(config(), redis_client, report_for(TradingMode.TESTNET))
    kwargs = {
        "symbol": "SOLUSDT",
        "side": "BUY",
        "qty": 1,
        "price": 150,
        "expected_move_usd": 10,
        "tp": 165,
        "sl": 144,
        "model": "XGBoost",
        "regime": "TREND",
        "leverage": 3,
        "trace_id": "x1",
    }
    verdict, reason, context = pgk.profit_gate(**kwargs)
    assert verdict == pgk.GateVerdict.HOLD
    assert reason.value == "MODEL_REGIME_MISMATCH"
    assert context["reasons"] == ["MODEL_REGIME_MISMATCH"]
    assert context["mode"] == "TESTNET"
    kwargs["model"] = "NHiTS"
    verdict, reason, context = pgk.profit_gate(**kwargs)
    assert (verdict, reason) == (GateVerdict.PASS, Reason.PASS)
    assert reason.value == "PASS"
    assert pgk.record_trade("SOLUSDT") is True
    verdict, reason, _ = pgk.profit_gate(**kwargs)
    assert reason is Reason.COOLDOWN
    assert set(pgk.__all__) >= {"profit_gate", "GateVerdict", "record_trade"}


def test_record_trade_never_raises_when_redis_is_down() -> None:
    pgk.configure(
        config(),
        redis.Redis(port=1, socket_connect_timeout=0.1, retry=None),
        report_for(TradingMode.LIVE),
    )
    assert pgk.record_trade("SOLUSDT") is False


class _Weird:
    """An object that is none of the types the contract names."""

    def __str__(self) -> str:
        return "BUY"


python_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**50, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.text(max_size=30),
    st.binary(max_size=10),
    st.builds(bytearray, st.binary(max_size=5)),
    st.builds(_Weird),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["BUY", "ETHUSDT", "NHiTS", "TREND", "0.01", "3500", "t-1", "true"]),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.fixed_dictionaries({k: python_values for k in sorted(SEED_KWARGS)}),
    mode=st.sampled_from([TradingMode.TESTNET, TradingMode.LIVE]),
)
def test_seed_api_never_raises_for_any_python_value(
    redis_client: redis.Redis, values: dict[str, object], mode: TradingMode
) -> None:
    """Whatever a caller passes: a decision, HOLD INVALID_INPUT unless the fields parse."""
    pgk.configure(config(), redis_client, report_for(mode))
    verdict, reason, ctx = pgk.profit_gate(**values)  # type: ignore[arg-type]
    if reason is Reason.INVALID_INPUT:
        assert verdict is GateVerdict.HOLD
        assert ctx["invalid_fields"]
    json.dumps(ctx, default=str)  # loggable
    assert pgk.record_trade(values["symbol"]) in (True, False)
