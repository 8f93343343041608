"""The float filter never certifies what the exact Decimal gates decide differently."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from helpers import config
from hypothesis import given, settings
from hypothesis import strategies as st

from core_kernel.gates import GateParams, Intent, evaluate_stateless
from core_kernel.mode import TradingMode
from core_kernel.prefilter import certify

DEFAULT = config().gate_params()
OTHER = config(MIN_R_OTHER="1.5", FEE_BPS_PER_SIDE=0, EDGE_MULTIPLIER=1).gate_params()


def exact(intent: Intent, params: GateParams, mode: TradingMode) -> tuple[bool, Any]:
    partial = evaluate_stateless(intent, params, mode)
    return partial.passes_without_state(mode), partial.ctx.get("symbol")


def float_intent(**over: Any) -> Intent:
    fields: dict[str, Any] = {
        "symbol": "ETHUSDT",
        "side": "BUY",
        "qty": 0.01,
        "price": 3500.0,
        "expected_move_usd": 250.0,
        "tp": 3600.0,
        "sl": 3465.0,
        "model": "NHiTS",
        "regime": "TREND",
        "leverage": 5,
        "trace_id": "f-1",
    }
    fields.update(over)
    return Intent(**fields)


def test_typical_float_and_text_intents_are_certified() -> None:
    for intent in (
        float_intent(),
        float_intent(qty="0.01", price="3500", expected_move_usd="250", tp="3600", sl="3465"),
        float_intent(side="SELL", tp=3400.0, sl=3535.0, leverage="5"),
    ):
        got = certify(intent, DEFAULT, TradingMode.TESTNET)
        assert got == (True, "ETHUSDT")
        assert got == exact(intent, DEFAULT, TradingMode.TESTNET)


@pytest.mark.parametrize(
    "over",
    [
        {"qty": 0.001},  # MIN_NOTIONAL
        {"expected_move_usd": 0.1},  # EDGE_TOO_SMALL
        {"tp": 3550.0},  # R_TOO_LOW
        {"model": "XGBoost"},  # MODEL_REGIME_MISMATCH
        {"regime": "SIDEWAYS"},  # unknown regime allows no model
    ],
)
def test_a_certain_failure_is_certified_false(over: dict[str, Any]) -> None:
    intent = float_intent(**over)
    assert certify(intent, DEFAULT, TradingMode.TESTNET) == (False, "ETHUSDT")
    assert exact(intent, DEFAULT, TradingMode.TESTNET) == (False, "ETHUSDT")
    # LIVE only audits the gates: valid input is enough.
    assert certify(intent, DEFAULT, TradingMode.LIVE) == (True, "ETHUSDT")


@pytest.mark.parametrize(
    "over",
    [
        {"tp": 3587.5},  # R exactly 2.5: inside the margin, the exact path decides
        {"qty": Decimal("0.01")},  # Decimal input
        {"reduce_only": True},  # exits
        {"qty": math.nan},
        {"price": math.inf},
        {"qty": 0.0},
        {"sl": 3500.0},  # sl on price: invalid, reported by the exact path
        {"tp": "1e400"},
        {"expected_move_usd": 0.0},
        {"leverage": ""},
        {"leverage": True},
        {"symbol": "not a symbol"},
        {"side": "HOLD"},
        {"model": "  "},
        {"trace_id": ""},
    ],
)
def test_anything_unusual_is_left_to_the_exact_path(over: dict[str, Any]) -> None:
    intent = float_intent(**over)
    got = certify(intent, DEFAULT, TradingMode.TESTNET)
    if "trace_id" in over or ("leverage" in over and over["leverage"] == ""):
        # the filter does not look at trace ids; an empty leverage means "not given"
        assert got == exact(intent, DEFAULT, TradingMode.TESTNET)
    else:
        assert got is None


def _near(value: float, kind: int) -> float:
    """value itself, or one/two ulps either side: the adversarial inputs for a margin."""
    steps = (0, 1, -1, 2, -2)[kind]
    for _ in range(abs(steps)):
        value = math.nextafter(value, math.inf if steps > 0 else -math.inf)
    return value


as_written = st.sampled_from(["float", "text", "int"])
numbers = st.one_of(
    st.floats(min_value=1e-31, max_value=2e15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-10, max_value=10**6),
    st.sampled_from(["", " 12.5 ", "1_000", "abc", "nan", "-inf", "1e-31", "9" * 70]),
)


def _intent(symbol: str, side: str, numbers: tuple[Any, ...], *rest: Any, kind: str) -> Intent:
    """qty, price, move, tp, sl in ``numbers``; model, regime, leverage in ``rest``."""
    model, regime, leverage = rest
    qty, price, move, tp, sl = (_form(v, kind) for v in numbers)
    return Intent(symbol, side, qty, price, move, tp, sl, model, regime, _form(leverage, kind), "t")


def _form(value: Any, kind: str) -> Any:
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    if kind == "text":
        return repr(value)
    if kind == "int" and value == int(value) and abs(value) < 2**53:
        return int(value)
    return value


@settings(max_examples=1500, deadline=None)
@given(
    price=st.floats(min_value=0.001, max_value=1e6),
    risk=st.floats(min_value=1e-6, max_value=0.5),
    r_target=st.sampled_from([1.5, 1.8, 2.5, 3.0, 0.5]),
    r_jitter=st.integers(0, 4),
    qty_jitter=st.integers(0, 4),
    move_jitter=st.integers(0, 4),
    side=st.sampled_from(["BUY", "SELL", " long ", "short"]),
    regime=st.sampled_from(["TREND", "range", "HIGH_VOL", "LOW_VOL", "OTHER"]),
    model=st.sampled_from(["NHiTS", "patchtst", "XGBoost", "LightGBM", "Other"]),
    kind=as_written,
    mode=st.sampled_from(list(TradingMode)),
    params=st.sampled_from([DEFAULT, OTHER]),
)
def test_near_every_threshold_certify_agrees_with_exact(
    price: float,
    risk: float,
    r_target: float,
    r_jitter: int,
    qty_jitter: int,
    move_jitter: int,
    side: str,
    regime: str,
    model: str,
    kind: str,
    mode: TradingMode,
    params: GateParams,
) -> None:
    # Inputs built to land on (or an ulp off) the notional, edge and R thresholds.
    buy = side.strip().upper() in {"BUY", "LONG"}
    sl = price * (1 - risk) if buy else price * (1 + risk)
    reward = r_target * abs(price - sl)
    tp = _near(price + reward if buy else price - reward, r_jitter)
    qty = _near(float(params.min_notional_usd) / price, qty_jitter)
    move = _near(price * qty * float(params.friction_rate * params.edge_multiplier), move_jitter)
    intent = _intent("ETHUSDT", side, (qty, price, move, tp, sl), model, regime, 5, kind=kind)
    got = certify(intent, params, mode)
    assert got is None or got == exact(intent, params, mode)


@settings(max_examples=1500, deadline=None)
@given(
    qty=numbers,
    price=numbers,
    move=numbers,
    tp=numbers,
    sl=numbers,
    leverage=st.one_of(st.none(), numbers),
    side=st.sampled_from(["BUY", "SELL", "", "x"]),
    symbol=st.sampled_from(["ETHUSDT", " BTCUSDT ", "", "a b"]),
    kind=as_written,
    mode=st.sampled_from(list(TradingMode)),
)
def test_on_any_input_certify_agrees_with_exact(
    qty: Any,
    price: Any,
    move: Any,
    tp: Any,
    sl: Any,
    leverage: Any,
    side: str,
    symbol: str,
    kind: str,
    mode: TradingMode,
) -> None:
    numbers = (qty, price, move, tp, sl)
    intent = _intent(symbol, side, numbers, "NHiTS", "TREND", leverage, kind=kind)
    got = certify(intent, DEFAULT, mode)
    assert got is None or got == exact(intent, DEFAULT, mode)


@settings(max_examples=3000, deadline=None)
@given(
    price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100000), places=4),
    risk=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("0.5"), places=4),
    target=st.sampled_from(["notional", "edge", "r"]),
    jitter=st.sampled_from([0, 1, -1]),
    scale=st.sampled_from([Decimal("1e-12"), Decimal("1e-15"), Decimal("1e-16"), Decimal("1e-17")]),
    buy=st.booleans(),
    kind=st.sampled_from(["float", "text"]),
    params=st.sampled_from([DEFAULT, OTHER]),
)
def test_decimal_ties_and_near_ties_certify_agrees_with_exact(
    price: Decimal,
    risk: Decimal,
    target: str,
    jitter: int,
    scale: Decimal,
    buy: bool,
    kind: str,
    params: GateParams,
) -> None:
    # One threshold hit exactly in decimal, then moved by less than a float can resolve (the
    # others comfortably passed): what a filter without its margin would get wrong.
    nudge = 1 + jitter * scale
    distance = price * risk
    sl = price - distance if buy else price + distance
    min_r = params.min_r_trend
    reward = min_r * distance * nudge if target == "r" else (min_r + 1) * distance
    tp = price + reward if buy else price - reward
    qty = params.min_notional_usd / price * (nudge if target == "notional" else 2)
    required = price * qty * params.friction_rate * params.edge_multiplier
    move = required * nudge if target == "edge" else required * 10 + 1

    def form(x: Decimal) -> Any:
        return float(x) if kind == "float" else str(x)

    intent = Intent(
        "ETHUSDT",
        "BUY" if buy else "SELL",
        form(qty),
        form(price),
        form(move),
        form(tp),
        form(sl),
        "NHiTS",
        "TREND",
        5,
        "t",
    )
    got = certify(intent, params, TradingMode.TESTNET)
    assert got is None or got == exact(intent, params, TradingMode.TESTNET)
