"""Small builders shared by the tests (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import json
import urllib.request
from decimal import Decimal
from typing import Any

from core_kernel.config import KernelConfig, load_config
from core_kernel.fake_binance import FakeBinance
from core_kernel.intent import Intent, parse_intent


def config(**overrides: Any) -> KernelConfig:
    """Defaults plus overrides given by env key, e.g. config(MAX_TRADES_10MIN=5)."""
    return load_config(environ={k: str(v) for k, v in overrides.items()})


def fields(**over: Any) -> dict[str, Any]:
    """The fields of ``valid()`` as a mapping (for the doors that take raw input)."""
    data: dict[str, Any] = {
        "symbol": "ETHUSDT",
        "side": "BUY",
        "qty": Decimal("0.01"),
        "price": Decimal("3500"),
        "expected_move_usd": Decimal("250"),
        "tp": Decimal("3587.5"),
        "sl": Decimal("3465"),
        "model": "NHiTS",
        "regime": "TREND",
        "leverage": 5,
        "trace_id": "t-1",
    }
    data.update(over)
    return data


def valid(**over: Any) -> Intent:
    """An entry that passes every gate with the default config (notional 35, R = 2.5 exactly)."""
    return parse_intent(fields(**over))


def control(server: FakeBinance, path: str, body: dict[str, Any] | None = None) -> Any:
    """The fake exchange's switches and records, over HTTP (never patched in-process)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server.root_url + path, data=data, method="POST" if data else "GET"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)
