"""A float filter that certifies the one bit admit's script needs before the exact evaluation.

``admit`` sends its script only once it knows whether the intent would pass if the state gates
pass (``Partial.passes_without_state``). The exact answer is the Decimal evaluation, the larger
part of an admit's own CPU time. ``certify`` answers from binary floats when the margin makes the
answer certain, and says ``None`` otherwise; admit then sends the script first and runs the
exact evaluation while Redis works, and checks that the two agree. The Decimal verdict stays the
only source of truth: this filter never certifies anything the exact path decides differently
(a property test checks it on adversarial inputs), and admit fails closed if it ever did.

Why floats are safe with a relative margin of 1e-9:
- an input float is the number as written rounded to nearest, so is ``float(text)``: each is
  within 2**-53 (relative) of the exact value;
- a product or difference of those adds at most a few 2**-53 of the operands' magnitudes;
so every quantity compared below is within ~1e-15 of the exact one, relative to the magnitudes
involved - six orders of magnitude inside the margin. Comparing two inputs directly is exact in
the strict sense: rounding to nearest is monotonic, so ``x < y`` as floats implies the numbers
as written are ordered the same way; equal floats certify nothing.
Anything unusual - Decimal or oversized inputs, values near the accepted range's edges, exits,
malformed fields, a comparison inside the margin - is left to the exact path.
"""

from __future__ import annotations

from typing import Any

from core_kernel.gates import _LIVE, _SIDES, GateParams, Intent, symbol_ok
from core_kernel.mode import TradingMode

_MARGIN = 1e-9
# The exact path accepts 1e-30 <= |x| < 1e15; stay clear of both edges.
_LO = 1e-30 * (1 + 1e-6)
_HI = 1e15 * (1 - 1e-6)
_INT_EXACT = 2**53


def _number(value: Any) -> float | None:
    """A float for a float, int or numeric text; None for anything else (the exact path's)."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is str:
        if len(value) > 64:
            return None
        try:
            return float(value)
        except ValueError:
            return None
    if kind is int and -_INT_EXACT < value < _INT_EXACT:
        return float(value)
    return None


def certify(intent: Intent, params: GateParams, mode: TradingMode) -> tuple[bool, str] | None:
    """``(passes_without_state, symbol)`` when certain from floats, else ``None``."""
    symbol, side, model, regime = intent.symbol, intent.side, intent.model, intent.regime
    if intent.reduce_only or not (
        type(symbol) is str and type(side) is str and type(model) is str and type(regime) is str
    ):
        return None
    symbol, model, regime = symbol.strip(), model.strip(), regime.strip().upper()
    direction = _SIDES.get(side.strip().upper())
    if direction is None or not model or not regime or not symbol_ok(symbol):
        return None
    qty, price, tp, sl, move = (
        intent.qty,
        intent.price,
        intent.tp,
        intent.sl,
        intent.expected_move_usd,
    )
    if not (
        type(qty) is float
        and type(price) is float
        and type(tp) is float
        and type(sl) is float
        and type(move) is float
    ):  # text from the stream, ints, or something only the exact path can judge
        qty, price, tp, sl = _number(qty), _number(price), _number(tp), _number(sl)
        move = _number(move)
        if qty is None or price is None or tp is None or sl is None or move is None:
            return None
    # NaN fails every comparison; zero, negatives and infinities fall outside.
    if (
        not (_LO < qty < _HI and _LO < price < _HI and _LO < tp < _HI and _LO < sl < _HI)
        or not _LO < abs(move) < _HI
    ):
        return None
    lev = intent.leverage
    if lev is not None and lev != "" and not (type(lev) is int and 0 < lev < _INT_EXACT):
        f = _number(lev)
        if f is None or not _LO < f < _HI:
            return None
    # tp and sl on the right side of price (strict float order certifies the exact order).
    if not (tp > price > sl if direction > 0 else tp < price < sl):
        return None
    if mode is _LIVE:
        return True, symbol  # valid input is all LIVE needs: its gates only audit
    # Each comparison below is decided only outside the margin, scaled by the magnitudes of
    # the inputs it was computed from.
    notional = price * qty
    floor = params._f_min_notional
    bound = _MARGIN * (notional + floor)
    if notional - floor > bound:
        ok = True
    elif floor - notional > bound:
        ok = False
    else:
        return None
    required = notional * params._f_edge_factor
    bound = _MARGIN * (abs(move) + required)
    if move - required > bound:
        pass
    elif required - move > bound:
        ok = False
    else:
        return None
    min_r = params._f_min_r.get(regime, params._f_min_r_other)
    if min_r is not None:
        if direction > 0:
            reward, risk = tp - price, price - sl
        else:
            reward, risk = price - tp, sl - price
        need = min_r * risk
        # The differences lose precision relative to the prices, not to themselves.
        bound = _MARGIN * (tp + price + min_r * (price + sl))
        if reward - need > bound:
            pass
        elif need - reward > bound:
            ok = False
        else:
            return None
    allowed = params._allowed_cf.get(regime)
    return (ok and allowed is not None and model.casefold() in allowed), symbol
