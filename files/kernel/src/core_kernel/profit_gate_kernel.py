"""The API existing services already call (``services.profit_gate_kernel`` through a shim)::

    from services.profit_gate_kernel import profit_gate, GateVerdict, record_trade
    verdict, reason, context = profit_gate(symbol=..., side=..., qty=..., price=...,
        expected_move_usd=..., tp=..., sl=..., model=..., regime=..., leverage=..., trace_id=...)
    if verdict == GateVerdict.HOLD: ...   # reason.value is the primary reason code
    record_trade(symbol)

The config is loaded and validated when this module is imported - a bad
``/etc/quantum/core_gates.env`` makes the import (and so the service) fail instead of trading on
defaults. The Redis connection is made on first use. ``configure()`` replaces either (tests).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import redis

from core_kernel import gates
from core_kernel.config import KernelConfig, load_config
from core_kernel.gates import GateVerdict, Reason
from core_kernel.intent import SYMBOL_PATTERN, IntentError, parse_intent
from core_kernel.log import kv
from core_kernel.mode import ModeReport, detect_mode
from core_kernel.redis_client import make_client
from core_kernel.store import KernelStore, StateError

__all__ = ["GateVerdict", "Reason", "configure", "get_store", "profit_gate", "record_trade"]

log = logging.getLogger("core_kernel.gates")


class _State:
    """The module's config, mode and (lazily) store."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config: KernelConfig = load_config()
        self.mode: ModeReport = detect_mode(self.config.mode_env())
        self.store: KernelStore | None = None


def _client(config: KernelConfig) -> redis.Redis:
    # Bounded: a stalled Redis answers STATE_UNAVAILABLE within seconds, never hangs a caller.
    return make_client(config, socket_connect_timeout=2, socket_timeout=2)


_state = _State()


def configure(
    config: KernelConfig | None = None,
    client: redis.Redis | None = None,
    mode: ModeReport | None = None,
    key_prefix: str = "quantum:",
) -> KernelStore:
    """Replace the module's config / Redis client / mode (defaults: reload from the env)."""
    with _state.lock:
        _state.config = config if config is not None else load_config()
        _state.mode = mode if mode is not None else detect_mode(_state.config.mode_env())
        if client is None:
            client = _client(_state.config)
        store = KernelStore(client, _state.config, _state.mode, key_prefix=key_prefix)
        _state.store = store
        return store


def get_store() -> KernelStore:
    store = _state.store
    if store is None:
        with _state.lock:
            store = _state.store
            if store is None:
                store = KernelStore(_client(_state.config), _state.config, _state.mode)
                _state.store = store
    return store


def profit_gate(  # noqa: PLR0917 - the seed's signature, kept as written
    symbol: Any,
    side: Any,
    qty: Any,
    price: Any,
    expected_move_usd: Any,
    tp: Any,
    sl: Any,
    model: Any,
    regime: Any,
    leverage: Any = None,
    trace_id: Any = "",
    *,
    reduce_only: Any = False,
) -> tuple[GateVerdict, Reason, dict[str, Any]]:
    """All six gates on the current shared state; records nothing (call ``record_trade``).

    ``context`` holds every reason (``reasons``), the numbers behind them and the mode. The
    arguments go through the one parse (``intent.parse_intent``); ``trace_id=""`` (the seed's
    default) and ``leverage=None`` mean "not given". Never raises for any argument value.
    """
    fields: dict[str, Any] = {
        "symbol": symbol,
        "side": side,
        "qty": qty,
        "price": price,
        "expected_move_usd": expected_move_usd,
        "tp": tp,
        "sl": sl,
        "model": model,
        "regime": regime,
        "leverage": leverage,
        "trace_id": None if isinstance(trace_id, str) and trace_id == "" else trace_id,
        "reduce_only": reduce_only,
    }
    store = get_store()
    try:
        intent = parse_intent(fields)
    except IntentError as exc:
        decision = store.log_decision(gates.rejected(exc, store.mode))
    else:
        decision = store.evaluate(intent)
    context = dict(decision.context)
    context["verdict"] = decision.verdict.value
    context["primary"] = decision.primary.value
    return decision.verdict, decision.primary, context


_SYMBOL = re.compile(SYMBOL_PATTERN)


def record_trade(symbol: Any) -> bool:
    """Record a trade for the cooldown and the rate window. False (logged) if it could not.

    Never raises: in LIVE (audit-only) a missing record must not stop an order that was already
    decided; in TESTNET the gate call before it already held. A symbol that is not one
    (``intent.SYMBOL_PATTERN``) or a key holding a foreign value is refused and logged.
    """
    if type(symbol) is not str or _SYMBOL.fullmatch(symbol) is None:
        log.error(kv("GATE_RECORD_FAILED", {"symbol": repr(symbol)[:80], "error": "not a symbol"}))
        return False
    try:
        get_store().record_trade(symbol)
    except StateError as exc:
        log.error(kv("GATE_RECORD_FAILED", {"symbol": symbol, "key": exc.key, "error": exc.reason}))
        return False
    except redis.RedisError as exc:
        log.error(kv("GATE_RECORD_FAILED", {"symbol": symbol, "error": type(exc).__name__}))
        return False
    return True
