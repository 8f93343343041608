"""The six economic gates as one pure function. No I/O, no Redis: every caller shares this verdict.

Every gate is evaluated and every failing reason returned in the fixed order of ``REASON_ORDER``;
the first is the primary reason. Arithmetic is ``decimal.Decimal`` on the numbers as written
(a float goes through its shortest ``repr``), and thresholds are compared by multiplication, not
division, so a ratio that is exactly the threshold in decimal passes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from decimal import getcontext as _getcontext
from decimal import setcontext as _setcontext
from enum import Enum, StrEnum
from typing import Any, NamedTuple

from core_kernel.mode import TradingMode


class Reason(StrEnum):
    INVALID_INPUT = "INVALID_INPUT"
    STATE_UNAVAILABLE = "STATE_UNAVAILABLE"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"
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
    Reason.DUPLICATE_ORDER,
    Reason.MIN_NOTIONAL,
    Reason.EDGE_TOO_SMALL,
    Reason.COOLDOWN,
    Reason.RATE_LIMIT,
    Reason.R_TOO_LOW,
    Reason.MODEL_REGIME_MISMATCH,
)

# Module-level aliases for the decision path: an Enum member lookup costs ~0.1 us here, a
# global a tenth of that, and one decision makes a dozen of them.
_INVALID = Reason.INVALID_INPUT
_UNAVAILABLE = Reason.STATE_UNAVAILABLE
_MIN_NOTIONAL = Reason.MIN_NOTIONAL
_EDGE = Reason.EDGE_TOO_SMALL
_COOLDOWN = Reason.COOLDOWN
_RATE_LIMIT = Reason.RATE_LIMIT
_R_TOO_LOW = Reason.R_TOO_LOW
_MODEL = Reason.MODEL_REGIME_MISMATCH
_PASS_REASON = Reason.PASS
_PASS = GateVerdict.PASS
_HOLD = GateVerdict.HOLD
_LIVE = TradingMode.LIVE
_CODES = {r: r.value for r in Reason}
_MODE_TEXT = {m: m.value for m in TradingMode}

# Enough digits that products and differences of bounded inputs are exact (see _MAX_DIGITS).
_CTX = Context(prec=200, traps=[InvalidOperation, DivisionByZero, Overflow])
_DISPLAY = Context(prec=12)
_SIDES = {"BUY": 1, "LONG": 1, "SELL": -1, "SHORT": -1}
_TRUE_TEXT = {"true", "1", "yes", "on"}


def parse_allowed_models(text: str) -> dict[str, tuple[str, ...]]:
    """``TREND:NHiTS,PatchTST;RANGE:XGBoost`` -> {"TREND": ("NHiTS", "PatchTST"), ...}."""
    table: dict[str, tuple[str, ...]] = {}
    for chunk in text.split(";"):
        part = chunk.strip()
        if not part:
            continue
        regime, sep, models = part.partition(":")
        regime = regime.strip().upper()
        if not sep or not regime:
            raise ValueError(f"entry {part!r} must look like REGIME:model,model")
        if regime in table:
            raise ValueError(f"regime {regime} listed twice")
        names = tuple(name.strip() for name in models.split(",") if name.strip())
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
    _allowed_cf: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _edge_factor: Decimal = field(init=False, repr=False, compare=False)
    # Float copies for core_kernel.prefilter, which only certifies what these decide exactly.
    _f_min_notional: float = field(init=False, repr=False, compare=False)
    _f_edge_factor: float = field(init=False, repr=False, compare=False)
    _f_min_r: dict[str, float] = field(init=False, repr=False, compare=False)
    _f_min_r_other: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        allowed = {
            regime.upper(): frozenset(m.casefold() for m in models)
            for regime, models in self.allowed_models.items()
        }
        object.__setattr__(self, "_allowed_cf", allowed)
        edge_factor = _CTX.multiply(self.friction_rate, self.edge_multiplier)
        object.__setattr__(self, "_edge_factor", edge_factor)
        object.__setattr__(self, "_f_min_notional", float(self.min_notional_usd))
        object.__setattr__(self, "_f_edge_factor", float(edge_factor))
        f_min_r = {"TREND": float(self.min_r_trend), "RANGE": float(self.min_r_range)}
        object.__setattr__(self, "_f_min_r", f_min_r)
        other = None if self.min_r_other is None else float(self.min_r_other)
        object.__setattr__(self, "_f_min_r_other", other)

    def min_r_for(self, regime: str) -> Decimal | None:
        if regime == "TREND":
            return self.min_r_trend
        if regime == "RANGE":
            return self.min_r_range
        return self.min_r_other


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_TEXT
    if isinstance(value, int):
        return value != 0
    return False


@dataclass(frozen=True, slots=True)
class Intent:
    """A trade intent as received: fields stay raw until ``evaluate`` validates them."""

    symbol: Any
    side: Any
    qty: Any
    price: Any
    expected_move_usd: Any = None
    tp: Any = None
    sl: Any = None
    model: Any = None
    regime: Any = None
    leverage: Any = None
    trace_id: Any = ""
    reduce_only: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    FIELDS = (
        "symbol",
        "side",
        "qty",
        "price",
        "expected_move_usd",
        "tp",
        "sl",
        "model",
        "regime",
        "leverage",
        "trace_id",
        "reduce_only",
    )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Intent:
        """Build from a dict (JSON, stream fields); unknown fields are kept in ``extra``."""
        known = {k: data[k] for k in cls.FIELDS if k in data}
        if "reduce_only" in known:
            known["reduce_only"] = _as_bool(known["reduce_only"])
        known.setdefault("symbol", None)
        known.setdefault("side", None)
        known.setdefault("qty", None)
        known.setdefault("price", None)
        if known.get("trace_id") is None:
            known["trace_id"] = ""
        extra = {k: v for k, v in data.items() if k not in cls.FIELDS}
        return cls(**known, extra=extra)


class Situation(NamedTuple):
    """The shared state the cooldown and rate gates need.

    A NamedTuple rather than a frozen dataclass: admit builds one per decision, and a frozen
    dataclass's ``__init__`` costs ~1 us here, a tuple's a quarter of that.
    """

    seconds_since_last_trade: Decimal | None = None  # None: no trade recorded on the symbol
    trades_in_window: int = 0
    available: bool = True

    @classmethod
    def unavailable(cls) -> Situation:
        return cls(None, 0, False)


@dataclass(slots=True)
class Decision:
    """One verdict. Treat as read-only (not frozen only because frozen init costs ~1 us)."""

    verdict: GateVerdict
    reasons: tuple[Reason, ...]
    primary: Reason
    enforced: bool
    mode: TradingMode
    context: dict[str, Any]
    replayed: bool = False

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


_FMAX = 1e15
_IMAX = 10**15
_FMIN = 1e-30
_SYMBOL = re.compile(r"[A-Za-z0-9._:/-]{1,64}")


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


def to_decimal(value: object) -> Decimal | str:
    """The number as written, or a short reason why it is not one."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return "not finite"
        if value and not _FMIN <= abs(value) < _FMAX:  # type: ignore[arg-type]
            return "out of range"
        return Decimal(repr(value))
    if kind is str:
        text = str(value).strip()
        if not text:
            return "missing"
        if len(text) > 64:
            return "too long"
        try:
            dec = Decimal(text)
        except InvalidOperation:
            return "not a number"
    elif kind is int:
        dec = Decimal(int(value))  # type: ignore[call-overload]
    elif kind is Decimal:
        dec = value  # type: ignore[assignment]
        if len(dec.as_tuple().digits) > 64:
            return "too many digits"
    elif value is None:
        return "missing"
    elif isinstance(value, bool):
        return "not a number (boolean)"
    elif isinstance(value, (int, float, Decimal, str)):  # subclasses: take the plain value
        base = (
            Decimal
            if isinstance(value, Decimal)
            else (int if isinstance(value, int) else float if isinstance(value, float) else str)
        )
        return to_decimal(base(value))
    else:
        return f"not a number ({kind.__name__})"
    if not dec.is_finite():
        return "not finite"
    # adjusted() is the exponent of the leading digit: a cheap magnitude test.
    if dec and not -30 <= dec.adjusted() <= 14:
        return "out of range"
    return dec


def _positive(name: str, raw: Any, invalid: dict[str, str]) -> Decimal | None:
    kind = type(raw)
    # Fast paths for the common, valid cases: floats from callers, text from the stream
    # (NaN fails every comparison and falls through to the full check).
    if kind is float:
        if _FMIN <= raw < _FMAX:
            return Decimal(repr(raw))
    elif kind is str and len(raw) <= 64:
        try:
            dec = Decimal(raw)
        except InvalidOperation:
            pass  # to_decimal below names the reason
        else:
            if dec.is_finite() and dec > 0 and -30 <= dec.adjusted() <= 14:
                return dec
    elif kind is int and 0 < raw < _IMAX:
        return Decimal(raw)
    got = to_decimal(raw)
    if type(got) is str:
        invalid[name] = got
        return None
    if got <= 0:  # type: ignore[operator]
        invalid[name] = "must be > 0"
        return None
    return got  # type: ignore[return-value]


_SYMBOLS_SEEN: set[str] = set()


def symbol_ok(symbol: str) -> bool:
    """Does ``symbol`` match ``_SYMBOL``? Remembers the (few) symbols a bot trades."""
    if symbol in _SYMBOLS_SEEN:
        return True
    if _SYMBOL.fullmatch(symbol) is None:
        return False
    if len(_SYMBOLS_SEEN) < 4096:  # bounded: arbitrary input must not grow it forever
        _SYMBOLS_SEEN.add(symbol)
    return True


def _missing(value: object) -> str:
    if value is None or isinstance(value, str):
        return "missing"
    return f"not text ({type(value).__name__})"


def _text(value: object) -> str | None:
    if isinstance(value, str):
        stripped = value.strip()
        return stripped or None
    return None


@dataclass(slots=True)
class Partial:
    """The gates that need no shared state, judged; ``finish`` adds the state gates."""

    failed: set[Reason]
    ctx: dict[str, Any]
    exit_only: bool

    def passes_without_state(self, mode: TradingMode) -> bool:
        """Would the verdict be PASS if the state gates pass? (What admit's script needs.)"""
        if _INVALID in self.failed:
            return False
        return mode is _LIVE or not self.failed


def evaluate(
    intent: Intent,
    situation: Situation,
    params: GateParams,
    mode: TradingMode,
) -> Decision:
    """Judge one intent. Never raises for any field value."""
    return finish(evaluate_stateless(intent, params, mode), situation, params, mode)


def finish(
    partial: Partial, situation: Situation, params: GateParams, mode: TradingMode
) -> Decision:
    """Add the cooldown and rate gates (entries only) and decide. Consumes ``partial``."""
    failed, ctx = partial.failed, partial.ctx
    if not partial.exit_only:
        if situation.available:
            since, count = situation.seconds_since_last_trade, situation.trades_in_window
            ctx["seconds_since_last_trade"] = since
            ctx["min_hold_seconds"] = params.min_hold_seconds
            ctx["trades_in_window"] = count
            ctx["max_trades"] = params.max_trades
            if since is not None and since < params.min_hold_seconds:
                failed.add(_COOLDOWN)
            if count >= params.max_trades:
                failed.add(_RATE_LIMIT)
        else:
            failed.add(_UNAVAILABLE)
    enforce = mode is not _LIVE
    if failed:
        reasons = tuple(r for r in REASON_ORDER if r in failed)
        ctx["reasons"] = [_CODES[r] for r in reasons]
        verdict = _HOLD if enforce or _INVALID in failed else _PASS
        primary = reasons[0]
    else:
        reasons = ()
        ctx["reasons"] = []
        verdict, primary = _PASS, _PASS_REASON
    ctx["enforced"] = enforce
    return Decision(verdict, reasons, primary, enforce, mode, ctx)


def evaluate_stateless(intent: Intent, params: GateParams, mode: TradingMode) -> Partial:
    """Validation and the four gates that need only the intent and the config."""
    # The arithmetic runs in _CTX (exact for bounded inputs) through the plain operators, which
    # are 2-3x cheaper than _CTX.multiply(...); the caller's context is restored either way.
    caller_ctx = _getcontext()
    _setcontext(_CTX)
    try:
        return _stateless(intent, params, mode)
    finally:
        _setcontext(caller_ctx)


def _stateless(  # noqa: PLR0915 - one straight pass over the gates is the fast path
    intent: Intent, params: GateParams, mode: TradingMode
) -> Partial:
    invalid: dict[str, str] = {}
    failed: set[Reason] = set()
    ctx: dict[str, Any] = {}
    exit_only = bool(intent.reduce_only)

    raw = intent.symbol
    symbol = (raw.strip() or None) if type(raw) is str else _text(raw)
    if symbol is None or not symbol_ok(symbol):
        invalid["symbol"] = (
            _missing(intent.symbol) if symbol is None else "not a symbol ([A-Za-z0-9._:/-]{1,64})"
        )
    raw = intent.side
    side_text = (raw.strip() or None) if type(raw) is str else _text(raw)
    side_up = side_text.upper() if side_text else None
    direction = _SIDES.get(side_up) if side_up else None
    if direction is None:
        invalid["side"] = _missing(intent.side) if side_text is None else "unknown side"

    qty = _positive("qty", intent.qty, invalid)
    price = _positive("price", intent.price, invalid)
    if intent.leverage is not None and intent.leverage != "":
        _positive("leverage", intent.leverage, invalid)

    ctx["mode"] = _MODE_TEXT[mode]
    ctx["reduce_only"] = exit_only
    if intent.trace_id:
        ctx["trace_id"] = str(intent.trace_id)
    if symbol is not None:
        ctx["symbol"] = symbol
    if side_up is not None:
        ctx["side"] = side_up

    if not exit_only:
        move_raw = to_decimal(intent.expected_move_usd)
        move: Decimal | None = None
        if type(move_raw) is str:
            invalid["expected_move_usd"] = move_raw
        else:
            move = move_raw  # type: ignore[assignment]
        tp = _positive("tp", intent.tp, invalid)
        sl = _positive("sl", intent.sl, invalid)
        if direction is not None and price is not None:
            # Plain comparisons: exact for Decimals, no rounding context involved.
            if tp is not None and (tp <= price if direction > 0 else tp >= price):
                invalid["tp"] = "on the wrong side of price for " + ctx["side"]
                tp = None
            if sl is not None and (sl >= price if direction > 0 else sl <= price):
                invalid["sl"] = "on the wrong side of price for " + ctx["side"]
                sl = None
        model = _text(intent.model)
        regime_text = _text(intent.regime)
        regime = regime_text.upper() if regime_text else None
        if model is None:
            invalid["model"] = _missing(intent.model)
        if regime is None:
            invalid["regime"] = _missing(intent.regime)

        # 1. notional
        notional: Decimal | None = None
        if qty is not None and price is not None:
            notional = price * qty
            ctx["notional_usd"] = notional
            ctx["min_notional_usd"] = params.min_notional_usd
            if notional < params.min_notional_usd:
                failed.add(_MIN_NOTIONAL)
        # 2. edge vs friction
        if notional is not None and move is not None:
            friction = notional * params.friction_rate
            required = notional * params._edge_factor
            ctx["expected_move_usd"] = move
            ctx["friction_usd"] = friction
            ctx["required_edge_usd"] = required
            if move < required:
                failed.add(_EDGE)
        # 3./4. (cooldown, rate) need the shared state: see finish()
        # 5. reward / risk
        if (
            tp is not None
            and sl is not None
            and price is not None
            and regime is not None
            and (direction is not None)
        ):
            # tp and sl passed the side check, so both differences are positive as written.
            if direction > 0:
                reward, risk = tp - price, price - sl
            else:
                reward, risk = price - tp, sl - price
            ctx["r"] = _DISPLAY.divide(reward, risk)
            min_r = params.min_r_for(regime)
            ctx["min_r"] = min_r
            if min_r is not None and reward < min_r * risk:
                failed.add(_R_TOO_LOW)
        # 6. model for regime
        if model is not None and regime is not None:
            ctx["model"] = model
            ctx["regime"] = regime
            allowed = params._allowed_cf.get(regime, frozenset())
            ctx["allowed_models"] = params.allowed_models.get(regime, ())
            if model.casefold() not in allowed:
                failed.add(_MODEL)
    elif qty is not None and price is not None:
        ctx["notional_usd"] = price * qty

    if invalid:
        failed.add(_INVALID)
        ctx["invalid_fields"] = invalid
    return Partial(failed, ctx, exit_only)


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
    for key in ("notional_usd", "required_edge_usd", "expected_move_usd", "r", "min_r"):
        if key in c:
            fields.append((key, c[key]))
    for key in ("model", "regime", "seconds_since_last_trade", "trades_in_window"):
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
