"""The economic gates as pure functions. No I/O, no Redis: every door shares these verdicts.

The path is one-directional (issue 11): ``intent.parse_intent`` validated the input once;
``judge`` applies the four gates that need only the intent and the config, exactly, in Decimal;
the admit script (``store``) applies the cooldown, rate and age gates on the Redis server's clock
and returns their outcome; ``finish`` builds the one ``Decision`` from both, without recomputing
anything the script decided. Every failing reason is returned in the fixed order of
``REASON_ORDER``; the first is the primary reason. Thresholds are compared by multiplication, not
division, so a ratio that is exactly the threshold in decimal passes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from decimal import getcontext as _getcontext
from decimal import setcontext as _setcontext
from enum import Enum, StrEnum
from typing import Any, NamedTuple

from core_kernel.intent import MODEL_PATTERN, REGIME_PATTERN, Intent, IntentError
from core_kernel.mode import TradingMode

__all__ = [
    "REASON_ORDER",
    "Decision",
    "GateParams",
    "GateVerdict",
    "Intent",
    "IntentError",
    "Market",
    "Partial",
    "Reason",
    "StateOutcome",
    "evaluate",
    "finish",
    "judge",
    "rejected",
]


class Reason(StrEnum):
    INVALID_INPUT = "INVALID_INPUT"
    STATE_UNAVAILABLE = "STATE_UNAVAILABLE"
    TRADING_HALTED = "TRADING_HALTED"
    REDUCING_ONLY = "REDUCING_ONLY"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"
    INTENT_EXPIRED = "INTENT_EXPIRED"
    MAX_NOTIONAL = "MAX_NOTIONAL"
    MAX_LEVERAGE = "MAX_LEVERAGE"
    PRICE_COLLAR = "PRICE_COLLAR"
    MAX_POSITION = "MAX_POSITION"
    MIN_NOTIONAL = "MIN_NOTIONAL"
    EDGE_TOO_SMALL = "EDGE_TOO_SMALL"
    COOLDOWN = "COOLDOWN"
    RATE_LIMIT = "RATE_LIMIT"
    R_TOO_LOW = "R_TOO_LOW"
    MODEL_REGIME_MISMATCH = "MODEL_REGIME_MISMATCH"
    PASS = "PASS"  # noqa: S105 - a reason code, not a password


class GateVerdict(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    HOLD = "HOLD"


#: Fail-closed codes first (nothing else can be trusted without them), then the six gates.
REASON_ORDER: tuple[Reason, ...] = (
    Reason.INVALID_INPUT,
    Reason.STATE_UNAVAILABLE,
    Reason.TRADING_HALTED,
    Reason.REDUCING_ONLY,
    Reason.DUPLICATE_ORDER,
    Reason.INTENT_EXPIRED,
    Reason.MAX_NOTIONAL,
    Reason.MAX_LEVERAGE,
    Reason.PRICE_COLLAR,
    Reason.MAX_POSITION,
    Reason.MIN_NOTIONAL,
    Reason.EDGE_TOO_SMALL,
    Reason.COOLDOWN,
    Reason.RATE_LIMIT,
    Reason.R_TOO_LOW,
    Reason.MODEL_REGIME_MISMATCH,
)
#: Reasons that HOLD in every mode: LIVE only audits the economic gates, never these (the
#: trading state is the operator's explicit command, not a gate's opinion).
FAIL_CLOSED = frozenset(
    {
        Reason.INVALID_INPUT,
        Reason.STATE_UNAVAILABLE,
        Reason.TRADING_HALTED,
        Reason.REDUCING_ONLY,
        Reason.DUPLICATE_ORDER,
        Reason.INTENT_EXPIRED,
    }
)

# Module-level aliases for the decision path: an Enum member lookup costs ~0.1 us here, a
# global a tenth of that, and one decision makes a dozen of them.
_INVALID = Reason.INVALID_INPUT
_UNAVAILABLE = Reason.STATE_UNAVAILABLE
_MIN_NOTIONAL = Reason.MIN_NOTIONAL
_MAX_NOTIONAL = Reason.MAX_NOTIONAL
_MAX_LEVERAGE = Reason.MAX_LEVERAGE
_COLLAR = Reason.PRICE_COLLAR
_MAX_POSITION = Reason.MAX_POSITION
_EDGE = Reason.EDGE_TOO_SMALL
_COOLDOWN = Reason.COOLDOWN
_RATE_LIMIT = Reason.RATE_LIMIT
_EXPIRED = Reason.INTENT_EXPIRED
_R_TOO_LOW = Reason.R_TOO_LOW
_MODEL = Reason.MODEL_REGIME_MISMATCH
_PASS_REASON = Reason.PASS
_PASS = GateVerdict.PASS
_HOLD = GateVerdict.HOLD
_LIVE = TradingMode.LIVE
_CODES = {r: r.value for r in Reason}
_MODE_TEXT = {m: m.value for m in TradingMode}

# Inputs are bounded by the parse (1e-30 .. 1e15, <= 64 digits), config values by check-config:
# 200 digits keep every product and difference exact, and the traps turn anything else into an
# error instead of a silently rounded verdict.
_CTX = Context(prec=200, Emax=999, Emin=-999, traps=[InvalidOperation, DivisionByZero, Overflow])
_DISPLAY = Context(prec=12)
_MODEL_RE = re.compile(MODEL_PATTERN)
_REGIME_RE = re.compile(REGIME_PATTERN)


def parse_allowed_models(text: str) -> dict[str, tuple[str, ...]]:
    """``TREND:NHiTS,PatchTST;RANGE:XGBoost`` -> {"TREND": ("NHiTS", "PatchTST"), ...}.

    Names follow the intent's patterns (ASCII), so the comparison needs no Unicode case folding.
    """
    table: dict[str, tuple[str, ...]] = {}
    for chunk in text.split(";"):
        part = chunk.strip()
        if not part:
            continue
        regime, sep, models = part.partition(":")
        regime = regime.strip()
        if not sep or not regime:
            raise ValueError(f"entry {part!r} must look like REGIME:model,model")
        if _REGIME_RE.fullmatch(regime) is None:
            raise ValueError(f"regime {regime!r} does not match {REGIME_PATTERN}")
        regime = regime.upper()
        if regime in table:
            raise ValueError(f"regime {regime} listed twice")
        names = tuple(name.strip() for name in models.split(",") if name.strip())
        for name in names:
            if _MODEL_RE.fullmatch(name) is None:
                raise ValueError(f"model {name!r} does not match {MODEL_PATTERN}")
        table[regime] = names
    if not table:
        raise ValueError("no regime listed")
    return table


@dataclass(frozen=True, slots=True)
class GateParams:
    """The thresholds, derived once from the config (``KernelConfig.gate_params()``)."""

    min_notional_usd: Decimal
    edge_multiplier: Decimal
    friction_rate: Decimal
    min_hold_seconds: int
    max_trades: int
    rate_window_seconds: int
    min_r_trend: Decimal
    min_r_range: Decimal
    min_r_other: Decimal | None
    allowed_models: Mapping[str, tuple[str, ...]]
    max_intent_age_ms: int = 180_000
    #: fat-finger limits (issue 14); None = off
    max_notional_usd: Decimal | None = None
    max_leverage: Decimal | None = None
    #: exchange-data limits (issue 14); None = off
    price_collar_pct: Decimal | None = None
    max_position_usd: Decimal | None = None
    max_gross_exposure_usd: Decimal | None = None
    _allowed_lc: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _edge_factor: Decimal = field(init=False, repr=False, compare=False)
    #: is any limit on exchange data (PRICE_COLLAR, MAX_POSITION) on?
    market_limits_on: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # ASCII lower-casing only: the names were checked against ASCII patterns.
        allowed = {
            regime.upper(): frozenset(m.lower() for m in models)
            for regime, models in self.allowed_models.items()
        }
        object.__setattr__(self, "_allowed_lc", allowed)
        object.__setattr__(
            self, "_edge_factor", _CTX.multiply(self.friction_rate, self.edge_multiplier)
        )
        limits = (self.price_collar_pct, self.max_position_usd, self.max_gross_exposure_usd)
        object.__setattr__(self, "market_limits_on", limits != (None, None, None))

    def min_r_for(self, regime: str) -> Decimal | None:
        if regime == "TREND":
            return self.min_r_trend
        if regime == "RANGE":
            return self.min_r_range
        return self.min_r_other


class StateOutcome(NamedTuple):
    """What the admit script decided about the shared state (or the what-if inputs).

    ``since_ms`` is the clamped elapsed time since the symbol's last trade (None: none recorded),
    ``trades`` the trades in the window, ``age_ms`` the intent's age (None: no entry time known).
    """

    cooldown: bool = False
    rate: bool = False
    expired: bool = False
    since_ms: int | None = None
    trades: int = 0
    age_ms: int | None = None
    #: MAX_POSITION counting orders in flight (admit.lua); the in-flight sums in micro-USD
    exposure: bool = False
    inflight_micro: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Market:
    """What the exchange said, for the limits that need it (issue 14): PRICE_COLLAR and
    MAX_POSITION. None = not known, and the ``*_error`` says why (unavailable, stale, garbage):
    the limit then holds (fail-closed). ``position_usd`` is the absolute notional of the
    symbol's position (both sides in hedge mode), ``gross_usd`` the sum over all symbols.
    """

    mark_price: Decimal | None = None
    position_usd: Decimal | None = None
    gross_usd: Decimal | None = None
    mark_error: str | None = None
    position_error: str | None = None


#: MAX_POSITION's amounts go to admit.lua as integers of 1e-6 USD: exact in Lua's doubles up
#: to 9e9 USD (limits are at most 1e9 USD); larger amounts are clamped, which cannot change a
#: comparison with a limit below them.
MICRO_USD = Decimal("0.000001")
_MICRO_CAP = 2 * 10**15


def to_micro(amount: Decimal, *, up: bool) -> int:
    """USD -> integer micro-USD, rounded up for amounts counted (conservative), down for limits."""
    q = amount.quantize(MICRO_USD, rounding=ROUND_CEILING if up else ROUND_FLOOR, context=_CTX)
    return min(int(q.scaleb(6, context=_CTX)), _MICRO_CAP)


class Decision:
    """One verdict. Treat as read-only.

    ``context`` (the numbers and notes behind the verdict, for the JSON output and the log line)
    is built on first read from what the judgement kept (``Partial``, the state outcome): the
    verdict never depends on it, and a worker that logs nothing never pays for it.
    """

    __slots__ = (
        "_context",
        "_params",
        "_partial",
        "_state",
        "client_order_id",
        "enforced",
        "mode",
        "primary",
        "reasons",
        "replayed",
        "trace_id",
        "verdict",
    )

    def __init__(
        self,
        verdict: GateVerdict,
        reasons: tuple[Reason, ...],
        primary: Reason,
        enforced: bool,
        mode: TradingMode,
        *,
        context: dict[str, Any] | None = None,
        replayed: bool = False,
        client_order_id: str | None = None,
        trace_id: str | None = None,
        partial: Partial | None = None,
        params: GateParams | None = None,
        state: StateOutcome | None = None,
    ) -> None:
        self.verdict = verdict
        self.reasons = reasons
        self.primary = primary
        self.enforced = enforced
        self.mode = mode
        # what ``finish`` judged, kept to build the context on first read (None when given)
        self._context = context
        self._partial = partial
        self._params = params
        self._state = state
        self.replayed = replayed
        self.client_order_id = client_order_id
        self.trace_id = trace_id

    @property
    def context(self) -> dict[str, Any]:
        ctx = self._context
        if ctx is None:
            ctx = self._context = _decision_context(self)
        return ctx

    @property
    def codes(self) -> list[str]:
        return [r.value for r in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reasons": self.codes,
            "primary": self.primary.value,
            "enforced": self.enforced,
            "mode": self.mode.value,
            "replayed": self.replayed,
            "context": jsonable(self.context),
        }

    def _key(self) -> tuple[Any, ...]:
        return (
            self.verdict,
            self.reasons,
            self.primary,
            self.enforced,
            self.mode,
            self.context,
            self.replayed,
            self.client_order_id,
            self.trace_id,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Decision(verdict={self.verdict!r}, reasons={self.reasons!r}, "
            f"primary={self.primary!r}, enforced={self.enforced!r}, mode={self.mode!r}, "
            f"context={self.context!r}, replayed={self.replayed!r}, "
            f"client_order_id={self.client_order_id!r}, trace_id={self.trace_id!r})"
        )


def jsonable(value: Any) -> Any:
    """Decimals as exact strings, enums as their values, recursively."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


@dataclass(slots=True)
class Partial:
    """The gates that need no shared state, judged; ``finish`` adds the script's outcome.

    ``ctx`` holds the notes a door or a limit adds (the trading state found, a state error, the
    exchange's data); the gates' own numbers are rebuilt from ``intent`` when a decision's
    context is read (``_decision_context``).
    """

    failed: set[Reason]
    ctx: dict[str, Any]
    exit_only: bool
    trace_id: str | None = None
    #: MAX_POSITION's input for admit.lua (micro-USD: position, gross, this order); None = the
    #: limit is off, or its data is missing (then it already failed here)
    exposure: tuple[int, int, int] | None = None
    intent: Intent | None = None
    #: client order id for the context (admit's stored decisions carry it), else None
    context_cid: str | None = None

    def passes_without_state(self, mode: TradingMode) -> bool:
        """Would the verdict be PASS if the state gates pass? (The one bit admit's script needs.)"""
        if self.failed & FAIL_CLOSED:
            return False
        return mode is _LIVE or not self.failed


def _base_ctx(mode: TradingMode, trace_id: str | None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"mode": _MODE_TEXT[mode]}
    if trace_id is not None:
        ctx["trace_id"] = trace_id
    return ctx


def rejected(error: IntentError, mode: TradingMode) -> Decision:
    """The decision for input that did not parse: HOLD INVALID_INPUT in every mode, every door."""
    ctx = _base_ctx(mode, error.trace_id)
    ctx["invalid_fields"] = dict(error.invalid)
    ctx["reasons"] = [_CODES[_INVALID]]
    enforce = mode is not _LIVE
    ctx["enforced"] = enforce
    return Decision(
        _HOLD, (_INVALID,), _INVALID, enforce, mode, context=ctx, trace_id=error.trace_id
    )


def evaluate(
    intent: Intent,
    params: GateParams,
    mode: TradingMode,
    state: StateOutcome | None = None,
    market: Market | None = None,
) -> Decision:
    """Judge one intent with a known state outcome (None: no state gate applies)."""
    return finish(judge(intent, params, mode, market), params, mode, state)


#: The trading state names (the ``trading_state`` module holds the enum; gates stays I/O-free).
TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")


def state_reason(trading_state: str, exit_only: bool) -> Reason | None:
    """The trading state's hold for one intent: HALTED (or any state that is not one of the
    three names) holds everything, REDUCING holds entries, ACTIVE nothing.

    admit.lua applies the same rule to the decisions it stores (bits T and U); this serves the
    replies that carry no fresh decision (a replay, the what-if input).
    """
    if trading_state == "ACTIVE":
        return None
    if trading_state == "REDUCING":
        return None if exit_only else Reason.REDUCING_ONLY
    return Reason.TRADING_HALTED


def apply_trading_state(partial: Partial, trading_state: str, hold: Reason | None) -> None:
    """Record the trading state an intent was judged under, and its hold (if any)."""
    partial.ctx["trading_state"] = trading_state
    if hold is not None:
        partial.failed.add(hold)


def what_if_state(since_s: Decimal | None, count: int, params: GateParams) -> StateOutcome:
    """The cooldown and rate comparisons for ``core-kernel evaluate``'s what-if fields only.

    Every decision on shared state is made by admit.lua (the same comparisons, in integer ms);
    this exists because the what-if input has no Redis to run it on.
    """
    since_ms = None if since_s is None else int(since_s * 1000)
    cooldown = since_ms is not None and since_ms < params.min_hold_seconds * 1000
    return StateOutcome(cooldown, count >= params.max_trades, False, since_ms, count, None)


def finish(
    partial: Partial,
    params: GateParams,
    mode: TradingMode,
    state: StateOutcome | None,
    *,
    verdict: GateVerdict | None = None,
    unavailable: bool = False,
) -> Decision:
    """One Decision from the stateless result and the state outcome. Consumes ``partial``.

    ``verdict`` is the admit script's when it ran: taken as is, never recomputed.
    """
    failed = partial.failed
    if unavailable:
        failed.add(_UNAVAILABLE)
        state = None
    elif state is not None:
        if state.expired:
            failed.add(_EXPIRED)
        if not partial.exit_only:
            if state.cooldown:
                failed.add(_COOLDOWN)
            if state.rate:
                failed.add(_RATE_LIMIT)
            if state.exposure:
                failed.add(_MAX_POSITION)
    enforce = mode is not _LIVE
    if failed:
        reasons = tuple(r for r in REASON_ORDER if r in failed)
        primary = reasons[0]
        if verdict is None:
            verdict = _HOLD if enforce or failed & FAIL_CLOSED else _PASS
    else:
        reasons = ()
        primary = _PASS_REASON
        if verdict is None:
            verdict = _PASS
    return Decision(
        verdict,
        reasons,
        primary,
        enforce,
        mode,
        trace_id=partial.trace_id,
        partial=partial,
        params=params,
        state=state,
    )


def _decision_context(decision: Decision) -> dict[str, Any]:
    """The context of a decision ``finish`` made, in the order the JSON output shows it."""
    partial, params, state = decision._partial, decision._params, decision._state
    if partial is None or params is None:  # pragma: no cover - a Decision has one or the other
        return {}
    ctx = _base_ctx(decision.mode, partial.trace_id)
    intent = partial.intent
    if intent is not None:
        caller_ctx = _getcontext()
        _setcontext(_CTX)
        try:
            _gate_context(ctx, intent, params)
        finally:
            _setcontext(caller_ctx)
    ctx.update(partial.ctx)
    if state is not None:
        if state.age_ms is not None:
            ctx["intent_age_ms"] = state.age_ms
            ctx["max_intent_age_ms"] = params.max_intent_age_ms
        if not partial.exit_only:
            ctx["seconds_since_last_trade"] = (
                None if state.since_ms is None else Decimal(state.since_ms).scaleb(-3)
            )
            ctx["min_hold_seconds"] = params.min_hold_seconds
            ctx["trades_in_window"] = state.trades
            ctx["max_trades"] = params.max_trades
            if state.inflight_micro is not None:
                ctx["inflight_position_usd"] = Decimal(state.inflight_micro[0]).scaleb(-6)
                ctx["inflight_gross_usd"] = Decimal(state.inflight_micro[1]).scaleb(-6)
    ctx["reasons"] = [_CODES[r] for r in decision.reasons]
    ctx["enforced"] = decision.enforced
    if partial.context_cid is not None:
        ctx["client_order_id"] = partial.context_cid
    return ctx


#: The six gates' arithmetic: _CTX's own methods (exact for bounded inputs), so the judgement
#: every admit makes switches no context - a switch allocates, and costs more than the
#: arithmetic when timed next to the server.
_MUL = _CTX.multiply
_SUB = _CTX.subtract


def judge(
    intent: Intent, params: GateParams, mode: TradingMode, market: Market | None = None
) -> Partial:
    """The gates that need only the intent, the config and (the exchange-data limits) what the
    exchange said (``market``), exactly, in Decimal."""
    # Only what the verdict needs: the numbers shown with it are _gate_context's, on demand.
    # Comparisons are exact in any context; every product and difference goes through _CTX.
    failed: set[Reason] = set()
    partial = Partial(failed, {}, intent.reduce_only, intent.trace_id, None, intent)
    if intent.reduce_only:
        return partial
    # parse_intent guarantees these for an entry (and tp/sl on the right side of price).
    move, tp, sl = intent.expected_move_usd, intent.tp, intent.sl
    model, regime = intent.model, intent.regime
    assert move is not None and tp is not None and sl is not None
    assert model is not None and regime is not None
    price = intent.price
    notional = _MUL(price, intent.qty)
    # fat-finger limits (issue 14): entries only, an exit must never be stranded by them
    if params.max_notional_usd is not None and notional > params.max_notional_usd:
        failed.add(_MAX_NOTIONAL)
    if (
        params.max_leverage is not None
        and intent.leverage is not None
        and intent.leverage > params.max_leverage
    ):
        failed.add(_MAX_LEVERAGE)
    # 1. notional
    if notional < params.min_notional_usd:
        failed.add(_MIN_NOTIONAL)
    # 2. edge vs friction
    if move < _MUL(notional, params._edge_factor):
        failed.add(_EDGE)
    # 3./4. cooldown and rate need the shared state: admit.lua decides them.
    # 5. reward / risk
    reward, risk = _reward_risk(intent.side, price, tp, sl)
    min_r = params.min_r_for(regime)
    if min_r is not None and reward < _MUL(min_r, risk):
        failed.add(_R_TOO_LOW)
    # 6. model for regime
    if model.lower() not in params._allowed_lc.get(regime, frozenset()):
        failed.add(_MODEL)
    if params.market_limits_on:
        # The limits' arithmetic runs in _CTX (exact for bounded inputs) through the plain
        # operators; the caller's context is restored either way.
        caller_ctx = _getcontext()
        _setcontext(_CTX)
        try:
            _market_limits(intent, params, market, partial)
        finally:
            _setcontext(caller_ctx)
    return partial


def _reward_risk(side: str, price: Decimal, tp: Decimal, sl: Decimal) -> tuple[Decimal, Decimal]:
    """An entry's reward (price to tp) and risk (price to sl), in its side's direction."""
    if side == "BUY":
        return _SUB(tp, price), _SUB(price, sl)
    return _SUB(price, tp), _SUB(sl, price)


def _gate_context(ctx: dict[str, Any], intent: Intent, params: GateParams) -> None:
    """The numbers behind ``_judge``'s verdict, for the output (the same arithmetic, in _CTX)."""
    exit_only = intent.reduce_only
    ctx["reduce_only"] = exit_only
    ctx["symbol"] = intent.symbol
    ctx["side"] = intent.side
    price = intent.price
    notional = price * intent.qty
    ctx["notional_usd"] = notional
    if exit_only:
        return
    move, tp, sl = intent.expected_move_usd, intent.tp, intent.sl
    assert move is not None and tp is not None and sl is not None
    assert intent.regime is not None
    if params.max_notional_usd is not None:
        ctx["max_notional_usd"] = params.max_notional_usd
    if params.max_leverage is not None and intent.leverage is not None:
        ctx["leverage"] = intent.leverage
        ctx["max_leverage"] = params.max_leverage
    ctx["min_notional_usd"] = params.min_notional_usd
    ctx["expected_move_usd"] = move
    ctx["friction_usd"] = notional * params.friction_rate
    ctx["required_edge_usd"] = notional * params._edge_factor
    reward, risk = _reward_risk(intent.side, price, tp, sl)
    ctx["r"] = _DISPLAY.divide(reward, risk)
    ctx["min_r"] = params.min_r_for(intent.regime)
    ctx["model"] = intent.model
    ctx["regime"] = intent.regime
    ctx["allowed_models"] = params.allowed_models.get(intent.regime, ())


def _market_limits(
    intent: Intent, params: GateParams, market: Market | None, partial: Partial
) -> None:
    """PRICE_COLLAR and MAX_POSITION (issue 14), entries only; no data = the limit holds.

    Collar: |price - mark| x 100 > PRICE_COLLAR_PCT x mark. Position: the exchange's position
    notional (absolute) + this order's notional (price x qty) must stay within
    MAX_POSITION_USD, and the gross exposure + it within MAX_GROSS_EXPOSURE_USD - an upper
    bound of the resulting exposure whatever the side. admit.lua checks the same sums with the
    orders in flight added (``partial.exposure``), atomically.
    """
    failed, ctx = partial.failed, partial.ctx
    price = intent.price
    notional = price * intent.qty
    pct = params.price_collar_pct
    mark = None if market is None else market.mark_price
    if pct is not None:
        ctx["price_collar_pct"] = pct
        if mark is None:
            ctx["mark_price_error"] = (
                "no market data"
                if market is None or market.mark_error is None
                else market.mark_error
            )
            failed.add(_COLLAR)
        else:
            ctx["mark_price"] = mark
            ctx["price_deviation_pct"] = _DISPLAY.divide(abs(price - mark) * 100, mark)
            if abs(price - mark) * 100 > pct * mark:
                failed.add(_COLLAR)
    max_pos, max_gross = params.max_position_usd, params.max_gross_exposure_usd
    if max_pos is None and max_gross is None:
        return
    ctx["max_position_usd"] = max_pos
    ctx["max_gross_exposure_usd"] = max_gross
    pos = None if market is None else market.position_usd
    gross = None if market is None else market.gross_usd
    if pos is None or gross is None:
        ctx["position_error"] = (
            "no position data"
            if market is None or market.position_error is None
            else market.position_error
        )
        failed.add(_MAX_POSITION)
        return
    ctx["position_notional_usd"] = pos
    ctx["gross_exposure_usd"] = gross
    ctx["resulting_position_usd"] = pos + notional
    ctx["resulting_gross_usd"] = gross + notional
    if (max_pos is not None and pos + notional > max_pos) or (
        max_gross is not None and gross + notional > max_gross
    ):
        failed.add(_MAX_POSITION)
    partial.exposure = (
        to_micro(pos, up=True),
        to_micro(gross, up=True),
        to_micro(notional, up=True),
    )


def log_fields(decision: Decision) -> list[tuple[str, object]]:
    """The key=value fields of the GATE_* log line for a decision."""
    c = decision.context
    fields: list[tuple[str, object]] = [
        ("trace_id", c.get("trace_id")),
        ("symbol", c.get("symbol")),
        ("side", c.get("side")),
        ("verdict", decision.verdict),
        ("primary", decision.primary),
        ("reasons", decision.codes or ["PASS"]),
        ("mode", decision.mode),
        ("enforced", decision.enforced),
        ("replayed", decision.replayed),
    ]
    for key in (
        "notional_usd",
        "required_edge_usd",
        "expected_move_usd",
        "r",
        "min_r",
        "mark_price",
        "resulting_position_usd",
        "resulting_gross_usd",
    ):
        if key in c:
            fields.append((key, c[key]))
    for key in (
        "trading_state",
        "model",
        "regime",
        "seconds_since_last_trade",
        "trades_in_window",
        "intent_age_ms",
        "client_order_id",
    ):
        if key in c:
            fields.append((key, c[key]))
    if "invalid_fields" in c:
        fields.append(("invalid", [f"{k}:{v}" for k, v in c["invalid_fields"].items()]))
    return fields


def log_event(decision: Decision) -> str:
    """GATE_AUDIT for LIVE with would-be reasons, else GATE_PASS / GATE_HOLD."""
    if decision.verdict is _HOLD:
        return "GATE_HOLD"
    if not decision.enforced and decision.reasons:
        return "GATE_AUDIT"
    return "GATE_PASS"
