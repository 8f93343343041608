"""Gate proof harness: one case per reason code, each where only that gate fails, plus a valid
trade, a LIVE audit case, the trading states (issue 14) and a malformed input - through the real
``admit`` on a real Redis, under keys of their own (``quantum:proof:<random>:``) that are
removed afterwards.

The limits on exchange data (PRICE_COLLAR, MAX_POSITION) get the proof's own market: the mark
price is each intent's price and the account flat, except in their own cases (the proof reads
nothing from an exchange).

Case inputs are derived from the configured thresholds, so the proof checks the gates as
deployed; a threshold that makes a case impossible (e.g. ``MIN_NOTIONAL_USD=0``) fails it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

import redis

from core_kernel.config import KernelConfig
from core_kernel.gates import Decision, GateVerdict, Market, Reason
from core_kernel.intent import Intent
from core_kernel.mode import TradingMode, report_for
from core_kernel.store import KernelStore
from core_kernel.trading_state import TradingState, state_key


@dataclass
class CaseResult:
    name: str
    description: str
    expected_verdict: str
    expected_reasons: list[str]
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    ok: bool = False
    note: str = ""
    context: dict[str, Any] = field(default_factory=dict)


def _scan_delete(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


class _Builder:
    """Inputs that pass every gate under the config; cases change one thing."""

    def __init__(self, config: KernelConfig) -> None:
        p = config.gate_params()
        self.p = p
        self.qty = Decimal("0.01")
        k = max(
            Decimal(1),
            (p.min_notional_usd * Decimal("1.4") / 35).to_integral_value(rounding=ROUND_CEILING),
        )
        self.price = Decimal(3500) * k
        notional = self.price * self.qty
        required = notional * p.friction_rate * p.edge_multiplier
        self.move = max(
            Decimal(250), (required * 2).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
        )
        self.risk = Decimal(35) * k
        trend = p.allowed_models.get("TREND", ())
        rng = p.allowed_models.get("RANGE", ())
        self.trend_model = trend[0] if trend else "NHiTS"
        self.range_model = rng[0] if rng else "XGBoost"
        self.wrong_trend_model = next(
            (
                m
                for m in ("XGBoost", "LightGBM", "NoSuchModel")
                if m.casefold() not in {x.casefold() for x in trend}
            ),
            "NoSuchModel",
        )

    def intent(self, trace: str, symbol: str = "ETHUSDT", **over: Any) -> dict[str, Any]:
        regime = over.pop("regime", "TREND")
        r = over.pop("r", None)
        if r is None:
            min_r = self.p.min_r_for(regime)
            r = min_r if min_r is not None else Decimal(3)
        price = over.pop("price", self.price)
        risk = over.pop("risk", self.risk)
        fields: dict[str, Any] = {
            "symbol": symbol,
            "side": "BUY",
            "qty": self.qty,
            "price": price,
            "expected_move_usd": self.move,
            "tp": price + r * risk,
            "sl": price - risk,
            "model": self.trend_model if regime == "TREND" else self.range_model,
            "regime": regime,
            "leverage": 5,
            "trace_id": trace,
        }
        fields.update(over)
        return fields


class _ProofStore(KernelStore):
    """An entry with no market given sees a flat account and a mark at its own price."""

    def admit(
        self, intent: Intent, *, entry_id: str | None = None, market: Market | None = None
    ) -> Decision:
        if market is None and not intent.reduce_only:
            market = Market(intent.price, Decimal(0), Decimal(0))
        return super().admit(intent, entry_id=entry_id, market=market)


def _market_cases(b: _Builder) -> Iterator[tuple[str, str, str, list[Reason], Any]]:
    """PRICE_COLLAR and MAX_POSITION, each when configured, on markets of their own."""
    p = b.p
    if p.price_collar_pct is not None:
        # A tenth of the price: 900 % off, beyond any PRICE_COLLAR_PCT (<= 100), and exact.
        far = b.price / 10
        collar_market = Market(far, Decimal(0), Decimal(0))

        def collar(store: KernelStore) -> Decision:
            return store.admit_mapping(b.intent("p-collar"), market=collar_market)

        yield (
            "PRICE_COLLAR",
            f"price {b.price} vs mark {far}: 900% off, PRICE_COLLAR_PCT={p.price_collar_pct}",
            "HOLD",
            [Reason.PRICE_COLLAR],
            collar,
        )
    if p.max_position_usd is not None or p.max_gross_exposure_usd is not None:

        def position(store: KernelStore) -> Decision:
            # The first entry fills the room exactly and stays in flight; the second, on the
            # same numbers from the exchange, must see it (admit.lua counts it).
            room = min(x for x in (p.max_position_usd, p.max_gross_exposure_usd) if x)
            held = room - b.price * b.qty
            market = Market(b.price, held, held)
            first = store.admit_mapping(b.intent("p-position-1", "BTCUSDT"), market=market)
            if first.verdict is not GateVerdict.PASS:
                raise RuntimeError(f"setup entry held: {first.codes}")
            # Only this gate may fail: the proof's own cooldown and rate keys are forgotten.
            store.redis.delete(store.last_trade_key("BTCUSDT"), store.trades_key)
            return store.admit_mapping(b.intent("p-position-2", "BTCUSDT"), market=market)

        yield (
            "MAX_POSITION",
            "an entry that fits the exchange's position, after one that filled the room is in "
            "flight",
            "HOLD",
            [Reason.MAX_POSITION],
            position,
        )


def _cases(b: _Builder) -> Iterator[tuple[str, str, str, list[Reason], Any]]:
    p = b.p

    def single(intent: dict[str, Any]) -> Any:
        return lambda store: store.admit_mapping(intent)

    small_qty = (p.min_notional_usd * Decimal("0.4") / Decimal(100000)).normalize()
    yield (
        "MIN_NOTIONAL",
        f"notional {small_qty * 100000} < {p.min_notional_usd}",
        "HOLD",
        [Reason.MIN_NOTIONAL],
        single(
            b.intent(
                "p-notional", "BTCUSDT", qty=small_qty, price=Decimal(100000), risk=Decimal(1000)
            )
        ),
    )
    notional = b.price * b.qty
    required = notional * p.friction_rate * p.edge_multiplier
    yield (
        "EDGE_TOO_SMALL",
        f"expected move {required / 2} < required {required}",
        "HOLD",
        [Reason.EDGE_TOO_SMALL],
        single(b.intent("p-edge", expected_move_usd=required / 2)),
    )

    def cooldown(store: KernelStore) -> Decision:
        first = store.admit_mapping(b.intent("p-cool-1", "SOLUSDT"))
        if first.verdict is not GateVerdict.PASS:
            raise RuntimeError(f"setup trade held: {first.codes}")
        return store.admit_mapping(b.intent("p-cool-2", "SOLUSDT"))

    yield (
        "COOLDOWN",
        f"second SOLUSDT trade right after the first (< {p.min_hold_seconds} s)",
        "HOLD",
        [Reason.COOLDOWN],
        cooldown,
    )

    def rate(store: KernelStore) -> Decision:
        for i in range(p.max_trades):
            store.record_trade(f"RATE{i}USDT")
        return store.admit_mapping(b.intent("p-rate", "XRPUSDT"))

    yield (
        "RATE_LIMIT",
        f"{p.max_trades} trades already in the window",
        "HOLD",
        [Reason.RATE_LIMIT],
        rate,
    )
    r_trend = p.min_r_trend * Decimal("0.8")
    yield (
        "R_TOO_LOW_TREND",
        f"R={r_trend} < MIN_R_TREND={p.min_r_trend}",
        "HOLD",
        [Reason.R_TOO_LOW],
        single(b.intent("p-r-trend", r=r_trend)),
    )
    r_range = p.min_r_range * Decimal("0.8")
    yield (
        "R_TOO_LOW_RANGE",
        f"R={r_range} < MIN_R_RANGE={p.min_r_range}",
        "HOLD",
        [Reason.R_TOO_LOW],
        single(b.intent("p-r-range", regime="RANGE", r=r_range)),
    )
    yield (
        "MODEL_REGIME_MISMATCH",
        f"{b.wrong_trend_model} in TREND",
        "HOLD",
        [Reason.MODEL_REGIME_MISMATCH],
        single(b.intent("p-model", model=b.wrong_trend_model)),
    )
    if p.max_notional_usd is not None:
        big_qty = (p.max_notional_usd * 2 / b.price).quantize(Decimal("0.001"), ROUND_CEILING)
        big = b.price * big_qty
        # An order that large may break the position limits too: they then say so as well.
        also = [
            Reason.MAX_POSITION
            for limit in (p.max_position_usd, p.max_gross_exposure_usd)
            if limit is not None and big > limit
        ][:1]
        yield (
            "MAX_NOTIONAL",
            f"notional {big} > MAX_NOTIONAL_USD={p.max_notional_usd}",
            "HOLD",
            [Reason.MAX_NOTIONAL, *also],
            single(
                b.intent(
                    "p-max-notional",
                    qty=big_qty,
                    expected_move_usd=big * p.friction_rate * p.edge_multiplier * 2,
                )
            ),
        )
    if p.max_leverage is not None:
        yield (
            "MAX_LEVERAGE",
            f"leverage {p.max_leverage + 1} > MAX_LEVERAGE={p.max_leverage}",
            "HOLD",
            [Reason.MAX_LEVERAGE],
            single(b.intent("p-max-leverage", leverage=p.max_leverage + 1)),
        )
    yield from _market_cases(b)
    yield (
        "VALID_TRADE",
        f"notional {notional}, R={p.min_r_trend} exactly, {b.trend_model} in TREND",
        "PASS",
        [],
        single(b.intent("p-valid")),
    )
    yield (
        "LIVE_AUDIT",
        "LIVE: small notional and wrong model pass, reasons reported",
        "PASS",
        [Reason.MIN_NOTIONAL, Reason.MODEL_REGIME_MISMATCH],
        (
            "LIVE",
            b.intent(
                "p-live",
                "BTCUSDT",
                qty=small_qty,
                price=Decimal(100000),
                risk=Decimal(1000),
                model=b.wrong_trend_model,
            ),
        ),
    )

    def expired(store: KernelStore) -> Decision:
        # An entry XADDed longer ago than MAX_INTENT_AGE_MS, dated by Redis's own clock.
        born = store.server_time_ms() - p.max_intent_age_ms - 1000
        return store.admit_mapping(b.intent("p-expired"), entry_id=f"{born}-0")

    yield (
        "INTENT_EXPIRED",
        f"stream entry older than MAX_INTENT_AGE_MS={p.max_intent_age_ms}",
        "HOLD",
        [Reason.INTENT_EXPIRED],
        expired,
    )

    def halted(store: KernelStore) -> Decision:
        # The proof's own state key (its prefix), never the one the workers read. LIVE: the
        # operator's halt is not audit-only.
        store.redis.hset(state_key(store.key_prefix), "state", TradingState.HALTED.value)
        return store.admit_mapping(b.intent("p-halted"))

    yield (
        "TRADING_HALTED",
        "LIVE, trading state HALTED: a valid trade is held",
        "HOLD",
        [Reason.TRADING_HALTED],
        ("LIVE", halted),
    )

    def reducing(store: KernelStore) -> Decision:
        store.redis.hset(state_key(store.key_prefix), "state", TradingState.REDUCING.value)
        exit_ = {k: b.intent("p-reduce-exit")[k] for k in ("symbol", "qty", "price", "trace_id")}
        left = store.admit_mapping({**exit_, "side": "SELL", "reduce_only": True})
        if left.verdict is not GateVerdict.PASS:
            raise RuntimeError(f"the reduce-only exit was held: {left.codes}")
        return store.admit_mapping(b.intent("p-reduce-entry"))

    yield (
        "REDUCING_ONLY",
        "trading state REDUCING: a valid entry is held (its reduce-only exit passed)",
        "HOLD",
        [Reason.REDUCING_ONLY],
        reducing,
    )
    yield (
        "MALFORMED_INPUT",
        "qty=NaN",
        "HOLD",
        [Reason.INVALID_INPUT],
        single(b.intent("p-malformed", qty="NaN")),
    )


def run_proof(client: redis.Redis, config: KernelConfig) -> list[CaseResult]:
    """Run every case on its own key prefix; always removes the keys it made."""
    run_id = uuid.uuid4().hex[:12]
    root = f"quantum:proof:{run_id}:"
    results: list[CaseResult] = []
    builder = _Builder(config)
    try:
        for index, (name, desc, verdict, reasons, spec) in enumerate(_cases(builder)):
            res = CaseResult(name, desc, verdict, [r.value for r in reasons])
            prefix = f"{root}{index}:"
            mode = TradingMode.TESTNET
            action = spec
            if isinstance(spec, tuple):
                mode = TradingMode(spec[0])
                if callable(spec[1]):
                    action = spec[1]
                else:

                    def run(store: KernelStore, _i: dict[str, Any] = spec[1]) -> Decision:
                        return store.admit_mapping(_i)

                    action = run
            store = _ProofStore(client, config, report_for(mode), key_prefix=prefix)
            try:
                decision = action(store)
            except (RuntimeError, redis.ResponseError) as exc:
                res.note = f"setup failed: {exc}"
            else:
                res.verdict = decision.verdict.value
                res.reasons = decision.codes
                res.context = decision.to_dict()["context"]
                res.ok = res.verdict == verdict and res.reasons == res.expected_reasons
                if name == "MALFORMED_INPUT":
                    named = "qty" in decision.context.get("invalid_fields", {})
                    res.ok = res.ok and named
                    res.note = "names field qty" if named else "field qty not named"
            results.append(res)
    finally:
        _scan_delete(client, root)
    return results


def render_table(results: list[CaseResult]) -> str:
    rows = [("CASE", "EXPECTED", "GOT", "OK", "INPUT")]
    for r in results:
        exp = r.expected_verdict + (
            f" ({','.join(r.expected_reasons)})" if r.expected_reasons else ""
        )
        got = (r.verdict or "-") + (f" ({','.join(r.reasons)})" if r.reasons else "")
        rows.append(
            (
                r.name,
                exp,
                got,
                "ok" if r.ok else "FAIL",
                r.description + (f" [{r.note}]" if r.note else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    passed = sum(r.ok for r in results)
    lines.append(f"GATE PROOF: {passed}/{len(results)} cases gave exactly the expected reasons")
    return "\n".join(lines)
