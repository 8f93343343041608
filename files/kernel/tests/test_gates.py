from __future__ import annotations

from decimal import Context, Decimal, Inexact, Rounded, getcontext, localcontext
from typing import Any

import pytest
from helpers import config, valid
from hypothesis import given, settings
from hypothesis import strategies as st

from core_kernel import gates
from core_kernel.gates import (
    REASON_ORDER,
    Decision,
    GateParams,
    GateVerdict,
    Reason,
    StateOutcome,
    log_event,
    log_fields,
)
from core_kernel.intent import Intent, IntentError, parse_intent
from core_kernel.log import kv
from core_kernel.mode import TradingMode

PARAMS = config().gate_params()
T, L, U = TradingMode.TESTNET, TradingMode.LIVE, TradingMode.UNKNOWN
UNAVAILABLE = "unavailable"


def state(since: Decimal | None, count: int) -> StateOutcome:
    return gates.what_if_state(since, count, PARAMS)


def evaluate(
    intent: Intent, st_: StateOutcome | str | None, params: GateParams, mode: TradingMode
) -> Decision:
    partial = gates.judge(intent, params, mode)
    if st_ == UNAVAILABLE:
        return gates.finish(partial, params, mode, None, unavailable=True)
    return gates.finish(partial, params, mode, st_)  # type: ignore[arg-type]


def run(intent: Intent, situation: Any = None, mode: TradingMode = T) -> Decision:
    return evaluate(intent, situation, PARAMS, mode)


def decide(over: dict[str, Any], mode: TradingMode = T) -> Decision:
    """Parse + judge, as every door does: malformed input is the rejected decision."""
    try:
        intent = valid(**over)
    except IntentError as exc:
        return gates.rejected(exc, mode)
    return run(intent, mode=mode)


def test_the_gates_are_exact_in_any_decimal_context_of_the_caller() -> None:
    # A caller's 3-digit context would round the notional 24.9998 up to 25.0 and the reward
    # 87.4999 up to 87.5 (R exactly 2.5): the gates never compute in it, and leave it as it was.
    with localcontext(Context(prec=3)) as caller:
        d = run(valid(qty=Decimal("0.0071428"), tp=Decimal("3587.4999")))
        assert Reason.MIN_NOTIONAL in d.reasons and Reason.R_TOO_LOW in d.reasons, d.reasons
        assert d.context["notional_usd"] == Decimal("24.9998")
        assert getcontext() is caller and caller.prec == 3
        assert caller.flags[Inexact] is False and caller.flags[Rounded] is False


def test_valid_trade_passes() -> None:
    d = run(valid())
    assert d.verdict is GateVerdict.PASS
    assert d.reasons == ()
    assert d.primary is Reason.PASS
    assert d.enforced
    assert d.context["notional_usd"] == Decimal("35.00")
    assert d.context["r"] == Decimal("2.5")


@pytest.mark.parametrize(
    ("over", "situation", "reason"),
    [
        (
            {
                "qty": Decimal("0.0001"),
                "price": Decimal(100000),
                "tp": Decimal(102500),
                "sl": Decimal(99000),
            },
            None,
            Reason.MIN_NOTIONAL,
        ),
        (
            {
                "expected_move_usd": Decimal("0.2"),
            },
            None,
            Reason.EDGE_TOO_SMALL,
        ),
        ({}, state(Decimal(299), 0), Reason.COOLDOWN),
        ({}, state(None, 3), Reason.RATE_LIMIT),
        ({"tp": Decimal(3570)}, None, Reason.R_TOO_LOW),
        ({"regime": "RANGE", "model": "XGBoost", "tp": Decimal(3552)}, None, Reason.R_TOO_LOW),
        ({"model": "XGBoost"}, None, Reason.MODEL_REGIME_MISMATCH),
    ],
)
def test_each_gate_alone(
    over: dict[str, Any], situation: StateOutcome | None, reason: Reason
) -> None:
    d = run(valid(**over), situation)
    assert d.verdict is GateVerdict.HOLD
    assert d.reasons == (reason,)
    assert d.primary is reason


def test_all_failing_reasons_in_fixed_order() -> None:
    d = run(
        valid(
            qty=Decimal("0.0001"),
            price=Decimal(100000),
            tp=Decimal(100100),
            sl=Decimal(99900),
            expected_move_usd=Decimal("0.01"),
            model="XGBoost",
        ),
        state(Decimal(1), 5),
    )
    assert d.reasons == (
        Reason.MIN_NOTIONAL,
        Reason.EDGE_TOO_SMALL,
        Reason.COOLDOWN,
        Reason.RATE_LIMIT,
        Reason.R_TOO_LOW,
        Reason.MODEL_REGIME_MISMATCH,
    )
    assert d.primary is Reason.MIN_NOTIONAL
    assert d.context["reasons"] == [r.value for r in d.reasons]
    assert list(d.reasons) == sorted(d.reasons, key=REASON_ORDER.index)


def test_float_ratio_exact_at_threshold_passes_in_decimal() -> None:
    # In binary floats (0.125-0.1)/(0.1-0.09) = 2.4999999999999973 < 2.5.
    assert abs(0.125 - 0.1) / abs(0.1 - 0.09) < 2.5
    d = run(valid(qty=1000, price=0.1, tp=0.125, sl=0.09))
    assert d.reasons == ()
    assert d.context["r"] == Decimal("2.5")


def test_other_regimes_have_no_r_gate_by_default_but_configurable() -> None:
    intent = valid(regime="HIGH_VOL", model="XGBoost", tp=Decimal(3501))
    assert run(intent).reasons == ()
    strict = config(MIN_R_OTHER="1.5").gate_params()
    assert evaluate(intent, None, strict, T).reasons == (Reason.R_TOO_LOW,)


def test_unknown_regime_allows_no_model() -> None:
    assert run(valid(regime="SIDEWAYS")).reasons == (Reason.MODEL_REGIME_MISMATCH,)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"qty": None}, "qty"),
        ({"qty": 0}, "qty"),
        ({"qty": -1}, "qty"),
        ({"qty": float("nan")}, "qty"),
        ({"qty": "inf"}, "qty"),
        ({"qty": "abc"}, "qty"),
        ({"qty": " 1"}, "qty"),
        ({"qty": "\u0661"}, "qty"),  # Arabic-Indic one
        ({"qty": "\uff11"}, "qty"),  # fullwidth one
        ({"qty": "1_000"}, "qty"),
        ({"expected_move_usd": 0}, "expected_move_usd"),
        ({"expected_move_usd": "-5"}, "expected_move_usd"),
        ({"side": "\u017fell"}, "side"),  # long s upper-cases to SELL
        ({"side": "Sell"}, "side"),
        ({"model": "PatchT\u017fT"}, "model"),
        ({"regime": "h\u0131gh_vol"}, "regime"),
        ({"symbol": "ETHUSDT\n"}, "symbol"),
        ({"symbol": " ETHUSDT"}, "symbol"),
        ({"symbol": 5}, "symbol"),
        ({"symbol": True}, "symbol"),
        ({"trace_id": "t-1\n"}, "trace_id"),
        ({"trace_id": " t-1"}, "trace_id"),
        ({"trace_id": "x" * 65}, "trace_id"),
        ({"reduce_only": "maybe"}, "reduce_only"),
        ({"reduce_only": "0"}, "reduce_only"),
        ({"reduce_only": ["x"]}, "reduce_only"),
        ({"qty": 10**20}, "qty"),
        ({"qty": Decimal("1e-400")}, "qty"),
        ({"qty": True}, "qty"),
        ({"price": 0}, "price"),
        ({"price": [1]}, "price"),
        ({"sl": 3600}, "sl"),
        ({"sl": 3500}, "sl"),
        ({"tp": 3400}, "tp"),
        ({"side": "HOLD"}, "side"),
        ({"side": None}, "side"),
        ({"model": ""}, "model"),
        ({"regime": " "}, "regime"),
        ({"symbol": ""}, "symbol"),
        ({"expected_move_usd": None}, "expected_move_usd"),
        ({"leverage": 0}, "leverage"),
        ({"qty": "1e400"}, "qty"),
    ],
)
@pytest.mark.parametrize("mode", [T, L, U])
def test_malformed_input_holds_in_every_mode(
    over: dict[str, Any], field: str, mode: TradingMode
) -> None:
    d = decide(over, mode)
    assert d.verdict is GateVerdict.HOLD
    assert d.primary is Reason.INVALID_INPUT
    assert field in d.context["invalid_fields"]


def test_sell_side_geometry() -> None:
    d = run(valid(side="SELL", tp=Decimal("3412.5"), sl=Decimal("3535")))
    assert d.reasons == ()
    bad = decide({"side": "SELL"})  # BUY geometry on a SELL
    assert bad.primary is Reason.INVALID_INPUT
    assert set(bad.context["invalid_fields"]) == {"tp", "sl"}


def test_live_is_audit_only() -> None:
    d = run(valid(model="XGBoost", qty=Decimal("0.001")), mode=L)
    assert d.verdict is GateVerdict.PASS
    assert not d.enforced
    assert d.reasons == (Reason.MIN_NOTIONAL, Reason.MODEL_REGIME_MISMATCH)
    assert log_event(d) == "GATE_AUDIT"


def test_unknown_mode_enforces() -> None:
    d = run(valid(model="XGBoost"), mode=U)
    assert d.verdict is GateVerdict.HOLD
    assert d.enforced


def test_state_unavailable_holds_in_every_mode() -> None:
    # Without the state nothing was recorded or deduplicated: LIVE's audit cannot pass it either.
    for mode in (T, L, U):
        held = run(valid(), UNAVAILABLE, mode=mode)
        assert held.verdict is GateVerdict.HOLD
        assert held.reasons == (Reason.STATE_UNAVAILABLE,)


def test_expired_holds_in_every_mode() -> None:
    for mode in (T, L, U):
        d = run(valid(), StateOutcome(expired=True, age_ms=999_999), mode=mode)
        assert (d.verdict, d.reasons) == (GateVerdict.HOLD, (Reason.INTENT_EXPIRED,))
        assert d.context["intent_age_ms"] == 999_999


def test_reduce_only_exit_bypasses_entry_gates_but_is_validated() -> None:
    exit_intent = valid(
        reduce_only=True,
        qty=Decimal("0.0001"),
        model="nope",
        tp=None,
        sl=None,
        expected_move_usd=None,
        regime=None,
    )
    d = run(exit_intent, StateOutcome(cooldown=True, rate=True))
    assert d.verdict is GateVerdict.PASS
    assert d.reasons == ()
    bad = decide({"reduce_only": True, "qty": "x"})
    assert bad.verdict is GateVerdict.HOLD
    assert bad.reasons == (Reason.INVALID_INPUT,)


def test_reduce_only_text_set_is_small_and_exact() -> None:
    base = {"symbol": "BTCUSDT", "side": "SELL", "qty": "1", "price": "2"}
    assert parse_intent({**base, "reduce_only": "true"}).reduce_only is True
    assert valid(reduce_only="false").reduce_only is False
    assert parse_intent({**base, "reduce_only": True}).reduce_only is True
    for bad in ("False", "0", "no", "off", "", 1, 0, ["x"], {}):
        with pytest.raises(IntentError, match="reduce_only: not a boolean"):
            parse_intent({**base, "reduce_only": bad})


def test_log_line_is_one_key_value_line() -> None:
    d = decide({"model": "bad model\nname"})
    line = kv(log_event(d), log_fields(d))
    assert line.startswith("GATE_HOLD ")
    assert "\n" not in line
    assert "reasons=INVALID_INPUT" in line
    assert "model:does not match" in line
    assert kv("GATE_PASS", log_fields(run(valid()))).count("reasons=PASS") == 1


def test_numbers_kept_as_written() -> None:
    assert valid(qty=0.1).qty == Decimal("0.1")
    assert str(valid(tp="3587.50").tp) == "3587.50"
    assert valid(leverage=7).leverage == Decimal(7)
    for bad, reason in ((float("inf"), "not finite"), ("1" * 70, "too long")):
        with pytest.raises(IntentError, match=reason):
            valid(qty=bad)


# ---------------------------------------------------------------------------------------------
# properties

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    symbol=anything,
    side=st.one_of(anything, st.sampled_from(["BUY", "SELL", "buy"])),
    qty=anything,
    price=anything,
    move=anything,
    tp=anything,
    sl=anything,
    model=anything,
    regime=anything,
    leverage=anything,
    reduce_only=st.booleans(),
    mode=st.sampled_from(list(TradingMode)),
    since=st.one_of(st.none(), st.decimals(min_value=0, max_value=10**6, places=3)),
    count=st.integers(min_value=0, max_value=100),
    available=st.booleans(),
)
def test_never_raises_and_invalid_always_holds(**kw: Any) -> None:
    data = {
        "symbol": kw["symbol"],
        "side": kw["side"],
        "qty": kw["qty"],
        "price": kw["price"],
        "expected_move_usd": kw["move"],
        "tp": kw["tp"],
        "sl": kw["sl"],
        "model": kw["model"],
        "regime": kw["regime"],
        "leverage": kw["leverage"],
        "trace_id": "t",
        "reduce_only": kw["reduce_only"],
    }
    try:
        intent = parse_intent(data)
    except IntentError as exc:
        d = gates.rejected(exc, kw["mode"])
    else:
        outcome = UNAVAILABLE if not kw["available"] else state(kw["since"], kw["count"])
        d = evaluate(intent, outcome, PARAMS, kw["mode"])
    if Reason.INVALID_INPUT in d.reasons:
        assert d.verdict is GateVerdict.HOLD
    if d.verdict is GateVerdict.PASS and kw["mode"] is not TradingMode.LIVE:
        assert d.reasons == ()
    assert d.primary is (d.reasons[0] if d.reasons else Reason.PASS)
    d.to_dict()  # JSON-ready whatever came in


positive = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(100000), places=4)
ratio = st.decimals(min_value=Decimal("0.1"), max_value=Decimal(20), places=3)


@settings(max_examples=300, deadline=None)
@given(
    price=positive,
    risk_frac=st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.9"), places=3),
    r1=ratio,
    r2=ratio,
)
def test_r_is_monotonic_in_reward(
    price: Decimal, risk_frac: Decimal, r1: Decimal, r2: Decimal
) -> None:
    risk = price * risk_frac
    lo, hi = sorted((r1, r2))
    fails_hi = (
        Reason.R_TOO_LOW in run(valid(price=price, sl=price - risk, tp=price + hi * risk)).reasons
    )
    fails_lo = (
        Reason.R_TOO_LOW in run(valid(price=price, sl=price - risk, tp=price + lo * risk)).reasons
    )
    assert not (fails_hi and not fails_lo)  # more reward never turns a pass into R_TOO_LOW


@settings(max_examples=300, deadline=None)
@given(
    price=positive,
    risk_frac=st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.9"), places=3),
    min_r=ratio,
    regime=st.sampled_from(["TREND", "RANGE"]),
)
def test_r_threshold_inclusive_and_exact(
    price: Decimal, risk_frac: Decimal, min_r: Decimal, regime: str
) -> None:
    params = config(MIN_R_TREND=min_r, MIN_R_RANGE=min_r).gate_params()
    risk = price * risk_frac
    model = "NHiTS" if regime == "TREND" else "XGBoost"
    at = valid(price=price, sl=price - risk, tp=price + min_r * risk, regime=regime, model=model)
    assert Reason.R_TOO_LOW not in evaluate(at, None, params, T).reasons
    tiny = Decimal("1e-12")
    below = valid(
        price=price, sl=price - risk, tp=price + min_r * risk - tiny, regime=regime, model=model
    )
    assert Reason.R_TOO_LOW in evaluate(below, None, params, T).reasons


@settings(max_examples=200, deadline=None)
@given(qty=positive, price=positive)
def test_notional_and_edge_thresholds_inclusive(qty: Decimal, price: Decimal) -> None:
    notional = qty * price
    params = config(MIN_NOTIONAL_USD=notional).gate_params()
    required = notional * params.friction_rate * params.edge_multiplier
    intent = valid(qty=qty, price=price, sl=price / 2, tp=price * 3, expected_move_usd=required)
    reasons = evaluate(intent, None, params, T).reasons
    assert Reason.MIN_NOTIONAL not in reasons
    assert Reason.EDGE_TOO_SMALL not in reasons
    less = valid(
        qty=qty,
        price=price,
        sl=price / 2,
        tp=price * 3,
        expected_move_usd=required - Decimal("1e-20"),
    )
    assert Reason.EDGE_TOO_SMALL in evaluate(less, None, params, T).reasons


@given(hold=st.integers(min_value=0, max_value=10**6), max_trades=st.integers(1, 50))
def test_cooldown_and_rate_thresholds_inclusive(hold: int, max_trades: int) -> None:
    params = config(MIN_HOLD_SECONDS=hold, MAX_TRADES_10MIN=max_trades).gate_params()
    ok = evaluate(valid(), gates.what_if_state(Decimal(hold), max_trades - 1, params), params, T)
    assert ok.reasons == ()
    since = max(Decimal(hold) - Decimal("0.001"), Decimal(0))
    blocked = evaluate(valid(), gates.what_if_state(since, max_trades, params), params, T)
    expected = {Reason.RATE_LIMIT} | ({Reason.COOLDOWN} if hold > 0 else set())
    assert set(blocked.reasons) == expected


def test_non_text_fields_are_named_as_such() -> None:
    d = decide({"model": 5, "side": ["BUY"]})
    assert d.context["invalid_fields"]["model"] == "not text (int)"
    assert d.context["invalid_fields"]["side"] == "not text (list)"
