"""Reference execution worker (quantum-execution-worker): intent -> admit -> order -> result -> ack.

Exactly once, step by step:

* The consumer name is stable (``EXECUTION_CONSUMER``, default ``<hostname>:quantum-execution``),
  never a PID: a restart reads the same pending-entries list (PEL), and the recovery sweep claims
  stale entries *into* this name. At start the worker re-reads its own PEL (id ``0``); while
  running it re-reads it every ``--pel-interval`` seconds and self-claims entries idle longer
  than ``STALE_IDLE_MS`` (XAUTOCLAIM, cursor followed to ``0-0``).
* ``KernelStore.admit`` judges and stores the decision under ``quantum:dedup:order:{trace_id}``;
  a redelivered intent replays its first decision (``replayed``), so it never flips.
* PASS: the adapter places the order with ``newClientOrderId = client_order_id(trace_id)``. A
  replayed PASS looks the order up first (the previous holder may have placed it and died). An
  order lease (``quantum:kernel:order_lease:{trace_id}``, SET NX PX) keeps two workers from
  sending the same intent at the same moment after a claim.
* The result (``order_placed`` / ``gate_blocked`` with every reason / ``failed``) is XADDed to
  ``RESULT_STREAM`` by one Lua script together with ``SET quantum:dedup:result:{trace_id} NX EX``,
  so a crash between result and ack cannot give two results; only then XACK.
* Transient trouble (Redis down, ``STATE_UNAVAILABLE``, exchange status unknown, rate limited,
  lease held by another worker) leaves the entry pending, to be retried from the PEL.
* SIGTERM/SIGINT finish the current intent, then exit 0. With ``NOTIFY_SOCKET`` set, READY=1,
  WATCHDOG=1 and STOPPING=1 are sent (stdlib sd_notify).

Test hook: ``CORE_KERNEL_FAULT_CRASH_AFTER_ORDER=N`` makes the process ``os._exit(137)`` right
after placing its N-th order, before the result and the ack - the fault the proof injects. It has
no other effect and is not meant for production.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from core_kernel import streams
from core_kernel.config import KernelConfig, load_service_config
from core_kernel.exchange import (
    CONDITIONAL_TYPES,
    ExchangeError,
    FilterViolation,
    FuturesExchange,
    OrderRejected,
    OrderResult,
    from_config,
)
from core_kernel.gates import Decision, GateVerdict, Intent, Reason
from core_kernel.log import kv, setup_logging
from core_kernel.mode import TradingMode, detect_mode
from core_kernel.store import KernelStore

log = logging.getLogger("core_kernel.worker")

RESULT_DEDUP_PREFIX = "quantum:dedup:result:"
LEASE_PREFIX = "quantum:kernel:order_lease:"
CRASH_HOOK_ENV = "CORE_KERNEL_FAULT_CRASH_AFTER_ORDER"

# SET NX EX the result key and XADD the result in one script: never one without the other.
_PUBLISH_RESULT_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local fields = {}
  for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
  local maxlen = tonumber(ARGV[2])
  if maxlen > 0 then
    return redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
  return redis.call('XADD', KEYS[2], '*', unpack(fields))
end
return false
"""


class Transient(Exception):
    """Leave the entry pending and retry it later."""


# --- systemd notify ---------------------------------------------------------------------------
def sd_notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET`` (no-op without it). Returns True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning(kv("SD_NOTIFY_FAILED", {"error": str(exc)}))
        return False
    return True


# --- results --------------------------------------------------------------------------------
def publish_result_once(
    client: redis.Redis,
    key: str,
    result: Mapping[str, Any],
    *,
    stream: str = streams.RESULT_STREAM,
    ttl_seconds: int = streams.DEDUP_TTL_SECONDS,
    maxlen: int = 100_000,
) -> str | None:
    """XADD ``result`` unless a result under ``key`` was already published; entry id or None."""
    fields: list[str] = []
    for name, value in result.items():
        if value is not None:
            fields.extend((str(name), streams._field_text(value)))
    script = _result_script(client)
    reply = script(keys=[RESULT_DEDUP_PREFIX + key, stream], args=[ttl_seconds, maxlen, *fields])
    return None if reply is None else streams._s(reply)


_RESULT_SCRIPTS: dict[int, Any] = {}


def _result_script(client: redis.Redis) -> Any:
    script = _RESULT_SCRIPTS.get(id(client))
    if script is None:
        script = client.register_script(_PUBLISH_RESULT_LUA)
        _RESULT_SCRIPTS[id(client)] = script
    return script


# --- the worker -----------------------------------------------------------------------------
@dataclass
class WorkerStats:
    processed: int = 0
    orders: int = 0
    recovered_orders: int = 0
    holds: int = 0
    failed: int = 0
    duplicate_results: int = 0
    transient: int = 0
    claimed: int = 0
    holds_by_reason: dict[str, int] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        client: redis.Redis,
        config: KernelConfig,
        mode: TradingMode,
        exchange: FuturesExchange,
        *,
        consumer: str | None = None,
        block_ms: int = 2000,
        pel_interval_s: float = 1.0,
        lease_ms: int | None = None,
        batch: int = 10,
    ) -> None:
        self.redis = client
        self.config = config
        self.mode = mode
        self.exchange = exchange
        self.store = KernelStore(client, config, mode)
        self.consumer = consumer or config.consumer_name
        self.block_ms = block_ms
        self.pel_interval_s = pel_interval_s
        self.lease_ms = lease_ms if lease_ms is not None else max(config.stale_idle_ms, 10_000)
        self.batch = batch
        self.result_stream = config.result_stream
        self.stats = WorkerStats()
        self.stopping = False
        hook = os.environ.get(CRASH_HOOK_ENV, "").strip()
        self._crash_after = int(hook) if hook else 0

    # one entry ---------------------------------------------------------------------------
    def handle(self, entry: streams.StreamEntry) -> None:
        """Process one entry to its result and ack, or raise Transient / a Redis error."""
        if not entry.fields:
            # Deleted from the stream while pending: nothing to execute; drop it from the PEL.
            log.warning(kv("INTENT_GONE", {"entry_id": entry.id}))
            streams.ack(self.redis, entry.id)
            return
        # The one parse (issue 11): an entry that does not decode is HOLD INVALID_INPUT.
        intent, decision = self.store.admit_entry(entry.fields, entry.id)
        trace_id = (intent.trace_id if intent is not None else decision.trace_id) or ""
        if Reason.STATE_UNAVAILABLE in decision.reasons and not decision.replayed:
            raise Transient("gate state unavailable (Redis)")
        result: dict[str, Any] = {
            "trace_id": trace_id or None,
            "entry_id": entry.id,
            "consumer": self.consumer,
            "symbol": intent.symbol if intent is not None else None,
            "side": intent.side if intent is not None else None,
            "qty": intent.qty if intent is not None else None,
            "replayed": decision.replayed,
            "mode": decision.mode.value,
            "client_order_id": decision.context.get("client_order_id"),
        }
        if decision.verdict is GateVerdict.HOLD:
            result.update(
                status="gate_blocked",
                primary=decision.primary.value,
                reasons=",".join(decision.codes),
            )
        else:
            assert intent is not None  # a PASS comes only from a parsed intent
            result.update(self._execute(intent, trace_id, decision))
        result["ts_ms"] = int(time.time() * 1000)
        key = trace_id or f"entry:{entry.id}"
        published = publish_result_once(self.redis, key, result, stream=self.result_stream)
        if published is None:
            self.stats.duplicate_results += 1
            log.info(kv("RESULT_ALREADY_PUBLISHED", {"trace_id": key, "entry_id": entry.id}))
        else:
            self._count(result)
        streams.ack(self.redis, entry.id)
        self.stats.processed += 1
        log.info(
            kv(
                "INTENT_DONE",
                {
                    "trace_id": key,
                    "entry_id": entry.id,
                    "status": result.get("status"),
                    "reasons": result.get("reasons"),
                    "order_id": result.get("order_id"),
                    "recovered": result.get("recovered"),
                },
            )
        )

    def _execute(self, intent: Intent, trace_id: str, decision: Decision) -> dict[str, Any]:
        order_type = intent.order_type
        kwargs: dict[str, Any] = {
            "order_type": order_type,
            "ref_price": intent.price,
            "reduce_only": bool(intent.reduce_only),
            "lookup_first": decision.replayed,
        }
        if order_type == "LIMIT":
            kwargs["price"] = intent.price
        if intent.stop_price is not None:
            kwargs["stop_price"] = intent.stop_price
        lease_key = LEASE_PREFIX + trace_id
        cid = decision.client_order_id or streams.client_order_id(trace_id)
        if decision.replayed:
            # Someone held this intent before us and may have placed it: look before sending.
            try:
                existing = self.exchange.lookup(
                    str(intent.symbol), cid, algo=order_type in CONDITIONAL_TYPES
                )
            except Exception as exc:  # any failure means "unknown": retry later
                raise Transient(f"lookup failed: {type(exc).__name__}: {exc}") from exc
            if existing is not None:
                return self._placed(OrderResult(cid, existing, True, 1, 0, ["found:0"]))
            kwargs["lookup_first"] = False
        if not self.redis.set(lease_key, self.consumer, nx=True, px=self.lease_ms):
            holder = streams._s(self.redis.get(lease_key))
            if holder != self.consumer:
                raise Transient(f"order lease held by {holder}")
        try:
            placed = self.exchange.place_order(
                trace_id, str(intent.symbol), str(intent.side), intent.qty, **kwargs
            )
        except (FilterViolation, OrderRejected) as exc:
            self.redis.delete(lease_key)
            return {"status": "failed", "reasons": exc.reason, "error": exc.detail}
        except ExchangeError as exc:
            raise Transient(f"{exc.reason}: {exc.detail}") from exc
        self._maybe_crash()
        return self._placed(placed)

    def _placed(self, placed: OrderResult) -> dict[str, Any]:
        return {
            "status": "order_placed",
            "order_id": placed.order_id,
            "client_order_id": placed.client_order_id,
            "exchange_status": placed.status,
            "recovered": placed.recovered,
            "attempts": placed.attempts,
            "rate_limited": placed.rate_limited,
        }

    def _maybe_crash(self) -> None:
        self.stats.orders += 1
        if self._crash_after and self.stats.orders >= self._crash_after:
            # Test hook (see module doc): die between order placement and result/ack.
            log.error(kv("FAULT_HOOK_CRASH", {"orders": self.stats.orders}))
            logging.shutdown()
            os._exit(137)

    def _count(self, result: Mapping[str, Any]) -> None:
        status = result.get("status")
        if status == "order_placed":
            if result.get("recovered"):
                self.stats.recovered_orders += 1
        elif status == "gate_blocked":
            self.stats.holds += 1
            primary = str(result.get("primary"))
            self.stats.holds_by_reason[primary] = self.stats.holds_by_reason.get(primary, 0) + 1
        else:
            self.stats.failed += 1

    # loops ---------------------------------------------------------------------------------
    def _run_entries(self, entries: list[streams.StreamEntry]) -> bool:
        """Handle entries in order; True if any was left pending."""
        left = False
        for entry in entries:
            try:
                self.handle(entry)
            except Transient as exc:
                self.stats.transient += 1
                left = True
                log.warning(kv("INTENT_RETRY_LATER", {"entry_id": entry.id, "why": str(exc)}))
            if self.stopping:
                break
        return left

    def drain_own_pending(self) -> None:
        start = "0"
        while not self.stopping:
            entries = streams.read_own_pending(self.redis, self.consumer, count=100, start_id=start)
            if not entries:
                return
            self._run_entries(entries)
            start = entries[-1].id

    def claim_stale(self) -> None:
        cursor = "0-0"
        while not self.stopping:
            page = streams.self_claim(
                self.redis, self.consumer, self.config.stale_idle_ms, count=100, start=cursor
            )
            if page.entries:
                self.stats.claimed += len(page.entries)
                log.info(kv("SELF_CLAIMED", {"count": len(page.entries)}))
                self._run_entries(page.entries)
            cursor = page.next_cursor
            if cursor in ("0-0", "0"):
                return

    def run(self) -> int:
        streams.ensure_group(self.redis)
        log.info(kv("WORKER_START", {"consumer": self.consumer, "mode": self.mode.value}))
        sd_notify("READY=1")
        next_pel = 0.0
        backoff = 0.2
        while not self.stopping:
            try:
                now = time.monotonic()
                if now >= next_pel:
                    self.drain_own_pending()
                    self.claim_stale()
                    next_pel = time.monotonic() + self.pel_interval_s
                sd_notify("WATCHDOG=1")
                if self.stopping:
                    break
                entries = streams.read_new(
                    self.redis, self.consumer, block_ms=self.block_ms, count=self.batch
                )
                if self._run_entries(entries):
                    next_pel = min(next_pel, time.monotonic() + self.pel_interval_s)
                backoff = 0.2
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                log.warning(kv("REDIS_UNAVAILABLE", {"error": str(exc), "retry_s": backoff}))
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                next_pel = 0.0  # something may be half done: read our PEL again first
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    streams.ensure_group(self.redis)
                    continue
                raise
        sd_notify("STOPPING=1")
        log.info(kv("WORKER_STOP", {"consumer": self.consumer, **_stats_fields(self.stats)}))
        return 0


def _stats_fields(stats: WorkerStats) -> dict[str, object]:
    return {
        "processed": stats.processed,
        "orders": stats.orders,
        "holds": stats.holds,
        "failed": stats.failed,
        "transient": stats.transient,
        "claimed": stats.claimed,
    }


# --- console entry ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantum-execution-worker",
        description="Reference execution worker: intents -> gates -> Binance order -> result.",
    )
    parser.add_argument("--config", default=None, help="env file (default $CORE_GATES_ENV)")
    parser.add_argument("--consumer", default=None, help="override EXECUTION_CONSUMER")
    parser.add_argument("--block-ms", type=int, default=2000)
    parser.add_argument("--pel-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--exchange-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--exchange-attempts", type=int, default=5)
    parser.add_argument("--max-backoff", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--allow-live", action="store_true", help="allow running in LIVE mode (real orders)"
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    errors: list[str] = []
    config = load_service_config(args.config, sys.stderr)
    if config is None:
        return 2
    mode = detect_mode(config.mode_env()).mode
    if mode is TradingMode.LIVE and not args.allow_live:
        errors.append("TRADING_MODE=LIVE: the reference worker needs --allow-live to place orders")
    if not config.binance_api_key:
        errors.append("BINANCE_API_KEY=: required (orders are signed)")
    if not config.binance_api_secret:
        errors.append("BINANCE_API_SECRET=: required (orders are signed)")
    if args.block_ms < 1:
        errors.append(f"--block-ms={args.block_ms}: must be >= 1")
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        return 2
    exchange = from_config(
        config,
        testnet=mode is not TradingMode.LIVE,
        timeout_s=args.exchange_timeout,
        max_attempts=args.exchange_attempts,
        max_backoff_s=args.max_backoff,
    )
    # socket_timeout above the block time: redis-py 8's 5 s default would break a long BLOCK.
    client = streams.make_client(
        config.redis_url,
        socket_timeout=args.block_ms / 1000 + 10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    worker = Worker(
        client,
        config,
        mode,
        exchange,
        consumer=args.consumer,
        block_ms=args.block_ms,
        pel_interval_s=args.pel_interval,
    )

    def _stop(signum: int, frame: Any) -> None:
        log.info(kv("WORKER_SIGNAL", {"signal": signal.Signals(signum).name}))
        worker.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = worker.run()
    print(json.dumps({"consumer": worker.consumer, **_stats_fields(worker.stats)}), flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
