from __future__ import annotations

import pytest

from core_kernel.mode import TradingMode, detect_mode


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        (
            {"TRADING_MODE": "TESTNET", "BINANCE_TESTNET": "true", "USE_BINANCE_TESTNET": "true"},
            TradingMode.TESTNET,
        ),
        (
            {"TRADING_MODE": "LIVE", "BINANCE_TESTNET": "false", "USE_BINANCE_TESTNET": "false"},
            TradingMode.LIVE,
        ),
        ({"TRADING_MODE": "testnet"}, TradingMode.TESTNET),
        ({"BINANCE_TESTNET": "1"}, TradingMode.TESTNET),
        ({}, TradingMode.UNKNOWN),
        ({"TRADING_MODE": ""}, TradingMode.UNKNOWN),
        ({"TRADING_MODE": "TESTNET", "BINANCE_TESTNET": "false"}, TradingMode.UNKNOWN),
        ({"TRADING_MODE": "LIVE", "USE_BINANCE_TESTNET": "true"}, TradingMode.UNKNOWN),
        ({"TRADING_MODE": "PAPER"}, TradingMode.UNKNOWN),
        ({"TRADING_MODE": "TESTNET", "BINANCE_TESTNET": "perhaps"}, TradingMode.UNKNOWN),
    ],
)
def test_detect_mode(env: dict[str, str], mode: TradingMode) -> None:
    report = detect_mode(env)
    assert report.mode is mode
    # uncertainty is never permission: only LIVE relaxes the gates, only TESTNET may mutate
    assert report.enforce is (mode is not TradingMode.LIVE)
    assert report.may_mutate is (mode is TradingMode.TESTNET)


def test_conflict_is_flagged_with_sources() -> None:
    report = detect_mode({"TRADING_MODE": "TESTNET", "BINANCE_TESTNET": "false"})
    assert report.conflict
    assert report.sources == {"TRADING_MODE": "TESTNET", "BINANCE_TESTNET": "false"}
    assert report.to_dict()["mode"] == "UNKNOWN"
