"""Prometheus metrics of the worker, the router and the recovery sweep (docs/METRICS.md).

Everything goes through ``prometheus_client``: the worker and the router serve their own
registry on a loopback address; the sweep, a oneshot, writes a textfile for node_exporter's
textfile collector (``write_to_textfile``: a temp file, then a rename). Each process owns its
registry (never the global one), so tests can build as many workers as they like.

Label values known in advance are created at start (a first event is then an increase from 0,
which ``increase()`` sees); the exchange's error codes are not known in advance beyond the
rate-limit answers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.parser import text_string_to_metric_families

from core_kernel.config import parse_listen
from core_kernel.gates import Decision, GateVerdict, Reason
from core_kernel.log import kv
from core_kernel.trading_state import TradingState

log = logging.getLogger("core_kernel.metrics")

PREFIX = "quantum_kernel_"
ORDER_OUTCOMES = ("placed", "recovered", "rejected", "failed", "unknown")
ENTRY_OUTCOMES = ("handled", "dead_lettered", "invalid", "retry")
#: Binance's answers to too many requests (429) and to continuing after one (418, an IP ban).
RATE_LIMIT_STATUSES = (429, 418)
# Admit is one Lua round trip (~0.1-1 ms); an order is one to a few HTTPS calls, waits included.
_ADMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_ORDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def serve(registry: CollectorRegistry, listen: str, name: str) -> bool:
    """Serve ``registry`` on ``listen`` in a daemon thread; False (and one log line) if the
    address cannot be bound. Trading goes on without metrics: the scrape target is then down,
    which is itself an alert."""
    where = parse_listen(listen)
    if where is None:
        return False
    try:
        start_http_server(where[1], addr=where[0], registry=registry)
    except OSError as exc:
        log.error(kv("METRICS_UNAVAILABLE", {"service": name, "listen": listen, "error": str(exc)}))
        return False
    log.info(kv("METRICS_SERVE", {"service": name, "listen": listen}))
    return True


def _registry(with_process: bool) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    if with_process:
        ProcessCollector(registry=registry)
    return registry


# --- the execution worker ----------------------------------------------------------------------
class WorkerMetrics:
    """What the execution worker counts; one method per event the worker reports."""

    def __init__(self, mode: str, *, process: bool = True) -> None:
        self.registry = r = _registry(process)
        self.decisions = Counter(
            PREFIX + "decisions",
            "Gate decisions by verdict, primary reason and trading mode.",
            ["verdict", "primary", "mode"],
            registry=r,
        )
        self.orders = Counter(
            PREFIX + "orders",
            "Order outcomes (unknown: a send's status became unknown).",
            ["outcome"],
            registry=r,
        )
        self.orders_unknown = Gauge(
            PREFIX + "orders_unknown",
            "Entries whose order status is unknown now (pending, resolved by lookups).",
            registry=r,
        )
        self.exchange_errors = Counter(
            PREFIX + "exchange_errors",
            "Error answers of the exchange (retried ones too) by HTTP status and Binance code.",
            ["status", "code"],
            registry=r,
        )
        self.admit_seconds = Histogram(
            PREFIX + "admit_duration_seconds",
            "Parse, decide and record one entry (admit).",
            registry=r,
            buckets=_ADMIT_BUCKETS,
        )
        self.order_seconds = Histogram(
            PREFIX + "order_duration_seconds",
            "One place_order call (lookups, sends, waits).",
            registry=r,
            buckets=_ORDER_BUCKETS,
        )
        self.entries = Counter(
            PREFIX + "entries", "Stream entries by what became of them.", ["outcome"], registry=r
        )
        self.last_read = Gauge(
            PREFIX + "last_read_timestamp_seconds",
            "Last successful read of the intent stream (an empty read counts).",
            registry=r,
        )
        self.last_processed = Gauge(
            PREFIX + "last_processed_timestamp_seconds",
            "Last intent that got its result (0: none since the worker started).",
            registry=r,
        )
        self.redis_up = Gauge(
            PREFIX + "redis_up",
            "1 after a successful Redis call, 0 after a connection, auth or timeout error.",
            registry=r,
        )
        self.trading_state = Gauge(
            PREFIX + "trading_state",
            "1 for the operator's trading state now.",
            ["state"],
            registry=r,
        )
        Info(PREFIX + "trading_mode", "The mode the worker runs in.", registry=r).info(
            {"mode": mode}
        )
        # Children looked up once: the decision path pays one dict lookup and one inc(). Every
        # pair exists: LIVE audits, so a PASS there can carry a gate's reason as its primary.
        self._decision = {
            (verdict, reason): self.decisions.labels(verdict.value, reason.value, mode)
            for verdict in GateVerdict
            for reason in Reason
        }
        self._order = {o: self.orders.labels(o) for o in ORDER_OUTCOMES}
        self._entry = {o: self.entries.labels(o) for o in ENTRY_OUTCOMES}
        for status in RATE_LIMIT_STATUSES:
            self.exchange_errors.labels(str(status), "-1003")
        self._states = {s: self.trading_state.labels(s.value) for s in TradingState}
        self._unknown: set[str] = set()

    def decision(self, decision: Decision) -> None:
        self._decision[decision.verdict, decision.primary].inc()

    def order(self, outcome: str) -> None:
        self._order[outcome].inc()

    def unknown(self, entry_id: str, now_unknown: bool) -> None:
        if now_unknown:
            self._unknown.add(entry_id)
        else:
            self._unknown.discard(entry_id)
        self.orders_unknown.set(len(self._unknown))

    def unknown_now(self, entry_ids: set[str]) -> None:
        self._unknown = set(entry_ids)
        self.orders_unknown.set(len(self._unknown))

    def exchange_error(self, status: int | None, code: int | None) -> None:
        self.exchange_errors.labels(
            "transport" if not status else str(status), "none" if code is None else str(code)
        ).inc()

    def entry(self, outcome: str) -> None:
        self._entry[outcome].inc()

    def read(self) -> None:
        self.last_read.set(time.time())
        self.redis_up.set(1)

    def processed(self) -> None:
        self.last_processed.set(time.time())

    def redis_down(self) -> None:
        self.redis_up.set(0)

    def state(self, state: TradingState) -> None:
        for name, child in self._states.items():
            child.set(1 if name is state else 0)


# --- the strategy router -----------------------------------------------------------------------
class RouterMetrics:
    def __init__(self, *, process: bool = True) -> None:
        self.registry = r = _registry(process)
        self.published = Counter(
            PREFIX + "router_intents_published", "Intents published to the stream.", registry=r
        )
        self.duplicates = Counter(
            PREFIX + "router_duplicates_skipped",
            "Intents not published again (their trace id was published before).",
            registry=r,
        )
        self.errors = Counter(
            PREFIX + "router_publish_errors",
            "Intents not published: invalid (refused by the intent contract) or redis.",
            ["reason"],
            registry=r,
        )
        self.last_publish = Gauge(
            PREFIX + "router_last_publish_timestamp_seconds",
            "Last intent published (0: none since the router started).",
            registry=r,
        )
        self._errors = {reason: self.errors.labels(reason) for reason in ("invalid", "redis")}

    def outcome(self, outcome: str) -> None:
        """outcome: published | duplicates | invalid | redis."""
        if outcome == "published":
            self.published.inc()
            self.last_publish.set(time.time())
        elif outcome == "duplicates":
            self.duplicates.inc()
        else:
            self._errors[outcome].inc()


# --- the recovery sweep's textfile ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SweepRun:
    started: float
    ended: float
    ok: bool
    counts: Mapping[str, int]
    health: Mapping[str, float]


#: Sweep summary key -> textfile gauge (this run's counts).
SWEEP_COUNTS = {
    "reclaimed": "recovery_reclaimed",
    "dead_lettered": "recovery_dead_lettered",
    "zombies_deleted": "recovery_zombies_deleted",
    "errors": "recovery_errors",
}
#: stream_metrics() key -> textfile gauge.
STREAM_GAUGES = {
    "length": "stream_length",
    "pending": "stream_pending",
    "group_lag": "stream_group_lag",
    "consumers": "stream_consumers",
    "oldest_pending_age_seconds": "stream_oldest_pending_age_seconds",
    "dead_letter_length": "dead_letter_length",
}
_LAST_SUCCESS = PREFIX + "recovery_last_success_timestamp_seconds"


def previous_success(path: Path) -> float:
    """The last success a previous run wrote (0 when there is none or the file is damaged)."""
    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == _LAST_SUCCESS:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0.0


def write_sweep_textfile(path: Path, run: SweepRun) -> None:
    """Write this run's gauges atomically (a failed run too: it carries the last success)."""
    r = _registry(False)

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(PREFIX + name, doc, registry=r).set(value)

    last_success = run.ended if run.ok else previous_success(path)
    gauge("recovery_last_run_timestamp_seconds", "End of the last recovery sweep.", run.ended)
    gauge(
        "recovery_last_success_timestamp_seconds",
        "End of the last sweep that succeeded (0: never).",
        last_success,
    )
    gauge("recovery_success", "1 if the last sweep succeeded.", 1 if run.ok else 0)
    gauge(
        "recovery_duration_seconds", "Duration of the last sweep.", max(run.ended - run.started, 0)
    )
    for key, name in SWEEP_COUNTS.items():
        gauge(name, f"Last sweep: {key.replace('_', ' ')}.", run.counts.get(key, 0))
    for key, name in STREAM_GAUGES.items():
        if key in run.health:
            gauge(
                name, f"Intent stream at the last sweep: {key.replace('_', ' ')}.", run.health[key]
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), r)
    # write_to_textfile creates the file with the umask's mode; node_exporter runs as another
    # user and must read it: the numbers are counts, not secrets.
    os.chmod(path, 0o644)


def stream_metrics(health: Mapping[str, Any], group: str) -> dict[str, float]:
    """The stream-health snapshot (health.stream_health) as the textfile's stream gauges."""
    out: dict[str, float] = {"length": float(health.get("length", 0))}
    if "dead_letter_length" in health:
        out["dead_letter_length"] = float(health["dead_letter_length"])
    for g in health.get("groups", []):
        if g.get("name") != group:
            continue
        out["pending"] = float(g["pending"])
        out["consumers"] = float(g["consumers"])
        if g.get("lag") is not None:
            out["group_lag"] = float(g["lag"])
        age_ms = g.get("oldest_pending_age_ms")
        out["oldest_pending_age_seconds"] = 0.0 if age_ms is None else age_ms / 1000
    return out
