"""TESTNET vs LIVE. Uncertainty is never permission: conflict or absence gives UNKNOWN."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

MODE_KEYS = ("TRADING_MODE", "BINANCE_TESTNET", "USE_BINANCE_TESTNET")

#: The boolean texts of the env file (lower-cased); config.py accepts exactly these (or empty).
TRUE_TEXTS = frozenset({"true", "1", "yes", "on"})
FALSE_TEXTS = frozenset({"false", "0", "no", "off"})


class TradingMode(StrEnum):
    TESTNET = "TESTNET"
    LIVE = "LIVE"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class ModeReport:
    """``enforce``: gates decide; ``may_mutate``: recovery may change Redis state."""

    mode: TradingMode
    enforce: bool
    may_mutate: bool
    sources: dict[str, str] = field(default_factory=dict)
    conflict: bool = False
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "enforce": self.enforce,
            "may_mutate": self.may_mutate,
            "sources": dict(self.sources),
            "conflict": self.conflict,
            "detail": self.detail,
        }


def _vote(key: str, raw: str) -> TradingMode | None:
    value = raw.strip()
    if key == "TRADING_MODE":
        upper = value.upper()
        return TradingMode(upper) if upper in {"TESTNET", "LIVE"} else None
    low = value.lower()
    if low in TRUE_TEXTS:
        return TradingMode.TESTNET
    if low in FALSE_TEXTS:
        return TradingMode.LIVE
    return None


def report_for(mode: TradingMode, sources: Mapping[str, str] | None = None) -> ModeReport:
    """A report for a mode stated directly (tests, ``evaluate --mode``)."""
    return ModeReport(
        mode=mode,
        enforce=mode is not TradingMode.LIVE,
        may_mutate=mode is TradingMode.TESTNET,
        sources=dict(sources or {}),
    )


def detect_mode(env: Mapping[str, str]) -> ModeReport:
    """Read the three keys. Every key that is set must name the same mode; at least one must be set.

    A set key with a value that is neither mode (e.g. ``TRADING_MODE=PAPER``) counts as a
    conflict: we cannot tell what the operator meant.
    """
    sources = {key: env[key] for key in MODE_KEYS if env.get(key, "").strip() != ""}
    if not sources:
        return ModeReport(
            TradingMode.UNKNOWN, True, False, sources, False, "none of " + ", ".join(MODE_KEYS)
        )
    votes = {key: _vote(key, raw) for key, raw in sources.items()}
    bad = [key for key, vote in votes.items() if vote is None]
    distinct = {vote for vote in votes.values() if vote is not None}
    if bad or len(distinct) != 1:
        detail = "unreadable: " + ",".join(bad) if bad else "sources disagree"
        return ModeReport(TradingMode.UNKNOWN, True, False, sources, True, detail)
    mode = distinct.pop()
    report = report_for(mode, sources)
    missing = [key for key in MODE_KEYS if key not in sources]
    if missing:
        return ModeReport(
            report.mode,
            report.enforce,
            report.may_mutate,
            sources,
            False,
            "not set: " + ",".join(missing),
        )
    return report
