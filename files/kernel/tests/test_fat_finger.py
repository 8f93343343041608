"""Fat-finger limits (issue 14): MAX_NOTIONAL and MAX_LEVERAGE, entries only, through the real
admit on a real Redis and the gate-proof harness."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from helpers import config, fields, valid

from core_kernel import gates
from core_kernel.config import ConfigError, load_config
from core_kernel.gates import GateVerdict, Reason
from core_kernel.intent import parse_intent
from core_kernel.mode import TradingMode
from core_kernel.proof import run_proof
from core_kernel.store import KernelStore


@pytest.mark.parametrize(
    ("env", "over", "expected"),
    [
        # notional 35 with the default intent; edge 250 covers the friction of 100 USD
        ({"MAX_NOTIONAL_USD": "35"}, {}, ()),  # inclusive: exactly at the limit passes
        ({"MAX_NOTIONAL_USD": "34.99"}, {}, (Reason.MAX_NOTIONAL,)),
        ({"MAX_NOTIONAL_USD": ""}, {"qty": "1000"}, (Reason.EDGE_TOO_SMALL,)),  # off
        ({}, {"qty": "20", "expected_move_usd": "10000"}, (Reason.MAX_NOTIONAL,)),  # 70000 > 50000
        ({"MAX_LEVERAGE": "5"}, {"leverage": 5}, ()),
        ({"MAX_LEVERAGE": "5"}, {"leverage": "5.5"}, (Reason.MAX_LEVERAGE,)),
        ({}, {"leverage": 21}, (Reason.MAX_LEVERAGE,)),
        ({"MAX_LEVERAGE": ""}, {"leverage": 100}, ()),  # off
        ({"MAX_LEVERAGE": "5"}, {"leverage": None}, ()),  # no leverage given: not checked
    ],
)
def test_limits_hold_entries_with_their_own_code(
    redis_client: redis.Redis,
    env: dict[str, str],
    over: dict[str, object],
    expected: tuple[Reason, ...],
) -> None:
    data = fields(trace_id="f1", **over)
    intent = parse_intent({k: v for k, v in data.items() if v is not None})
    decision = KernelStore(redis_client, config(**env), TradingMode.TESTNET).admit(intent)
    assert decision.reasons == expected
    assert decision.verdict is (GateVerdict.HOLD if expected else GateVerdict.PASS)


def test_reduce_only_exits_are_exempt(redis_client: redis.Redis) -> None:
    store = KernelStore(
        redis_client, config(MAX_NOTIONAL_USD="1", MAX_LEVERAGE="1"), TradingMode.TESTNET
    )
    exit_ = parse_intent(
        {
            "symbol": "ETHUSDT",
            "side": "SELL",
            "qty": "100",
            "price": "3500",
            "leverage": 50,
            "reduce_only": True,
            "trace_id": "x1",
        }
    )
    decision = store.admit(exit_)
    assert decision.verdict is GateVerdict.PASS and decision.reasons == ()
    # input validation still applies to exits
    bad = store.admit_mapping(
        {
            "symbol": "ETHUSDT",
            "side": "SELL",
            "qty": "NaN",
            "price": "1",
            "reduce_only": True,
            "trace_id": "x2",
        }
    )
    assert bad.primary is Reason.INVALID_INPUT


def test_live_audits_the_limits(redis_client: redis.Redis) -> None:
    store = KernelStore(redis_client, config(MAX_NOTIONAL_USD="10"), TradingMode.LIVE)
    decision = store.admit(valid(trace_id="l1"))
    assert decision.verdict is GateVerdict.PASS and decision.reasons == (Reason.MAX_NOTIONAL,)
    assert gates.log_event(decision) == "GATE_AUDIT"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_NOTIONAL_USD", "0"),
        ("MAX_NOTIONAL_USD", "-1"),
        ("MAX_NOTIONAL_USD", "1e16"),
        ("MAX_NOTIONAL_USD", "abc"),
        ("MAX_LEVERAGE", "0.5"),
        ("MAX_LEVERAGE", "126"),
        ("MAX_LEVERAGE", "\uff12\uff10"),  # fullwidth digits
    ],
)
def test_bad_limits_are_config_errors_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={key: value})
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(f"{key}=")


def test_gate_proof_has_a_case_per_limit_and_drops_a_limit_that_is_off(
    redis_client: redis.Redis,
) -> None:
    names = [r.name for r in run_proof(redis_client, config()) if r.ok]
    assert "MAX_NOTIONAL" in names and "MAX_LEVERAGE" in names
    off = run_proof(redis_client, config(MAX_NOTIONAL_USD="", MAX_LEVERAGE=""))
    assert all(r.ok for r in off)
    assert not {"MAX_NOTIONAL", "MAX_LEVERAGE"} & {r.name for r in off}
    assert Decimal(str(config().max_notional_usd)) == Decimal(50000)
