"""Reference strategy router (``quantum-strategy-router``): intents in, ``publish_intent_once`` out.

Subcommands:

* ``publish [FILE|-]`` - JSON lines (one intent per line), each published once; prints
  ``{"published": n, "duplicates": n, "invalid": n}``. Exit 1 if any line was invalid.
* ``serve`` - the long-running service: pops JSON intents from the Redis list
  ``quantum:router:inbox`` (``BLPOP``; push with ``LPUSH`` / ``RPUSH``) and publishes them.
  SIGTERM stops it between two intents; READY=1/WATCHDOG=1 go to ``$NOTIFY_SOCKET`` if set.
* ``demo --phase basic|hold-pending|verify`` - the lab pipeline demonstration (lab_demo.yml):
  ``basic`` publishes one intent twice and a few that the gates hold, and waits for their results;
  ``hold-pending`` (run while the worker is stopped) publishes one intent and reads it into the
  worker's own consumer without acking - what a worker killed mid-intent leaves behind;
  ``verify`` (after the worker is started again) waits for that intent's result and writes the
  summary JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import redis
from redis.client import NEVER_DECODE

from core_kernel import consume, streams
from core_kernel.config import KernelConfig, check_redis_url, load_service_config, redact_url
from core_kernel.intent import loads_json
from core_kernel.log import kv, setup_logging
from core_kernel.metrics import RouterMetrics
from core_kernel.metrics import serve as metrics_serve
from core_kernel.redis_client import target_from_config, target_key
from core_kernel.worker import sd_notify

log = logging.getLogger("core_kernel.router")

INBOX = "quantum:router:inbox"
DEMO_RUN_KEY = "quantum:demo:run"


def publish_lines(client: redis.Redis, lines: Iterable[bytes | str]) -> dict[str, Any]:
    """Publish each JSON line once; counts plus one error line per invalid input."""
    counts: dict[str, Any] = {"published": 0, "duplicates": 0, "invalid": 0, "errors": []}
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        outcome = publish_text(client, text)
        if outcome.startswith("error:"):
            counts["invalid"] += 1
            counts["errors"].append(f"line {lineno}: {outcome[6:]}")
        else:
            counts[outcome] += 1
    return counts


def publish_text(client: redis.Redis, text: bytes | str) -> str:
    """'published', 'duplicates' or 'error:<reason>' for one JSON intent.

    The JSON is read as every door reads it (``intent.loads_json``: Decimal numbers, no NaN, no
    huge integers, bounded nesting) and published only if it parses as an intent.
    """
    try:
        data = loads_json(text)
    except ValueError as exc:
        return f"error:not JSON ({exc})"
    if not isinstance(data, dict):
        return "error:an intent must be a JSON object"
    try:
        entry = streams.publish_intent_once(client, data)
    except ValueError as exc:
        return f"error:{exc}"
    outcome = "duplicates" if entry is None else "published"
    log.info(kv("INTENT_PUBLISH", {"trace_id": data["trace_id"], "outcome": outcome}))
    return outcome


def _lines(source: str) -> Iterator[bytes]:
    # Bytes: a non-UTF-8 line is reported as that line's error, never a crash losing the rest.
    if source == "-":
        yield from sys.stdin.buffer
        return
    with open(source, "rb") as fh:
        yield from fh


def serve(client: redis.Redis, *, block_s: int = 2, metrics: RouterMetrics | None = None) -> int:
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    streams.ensure_group(client)
    sd_notify("READY=1")
    log.info(kv("ROUTER_SERVE", {"inbox": INBOX}))
    counts = {"published": 0, "duplicates": 0, "invalid": 0}
    backoff = 0.2
    while not stopping:
        sd_notify("WATCHDOG=1")
        try:
            # Raw bytes: one non-UTF-8 push is that intent's error, never the service's crash.
            item = client.execute_command(  # type: ignore[no-untyped-call]
                "BLPOP", INBOX, block_s, **{NEVER_DECODE: True}
            )
            backoff = 0.2
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            event, text = streams.redis_down(exc)
            log.warning(kv(event, {"error": text, "retry_s": backoff}))
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        if not item:
            continue
        try:
            outcome = publish_text(client, item[1])
        except redis.RedisError:
            if metrics is not None:
                metrics.outcome("redis")
            # Not this intent's fault (e.g. a stream key of the wrong type): put it back at the
            # head of the inbox before main() reports the error and exits, so it is not lost.
            client.lpush(INBOX, item[1])
            raise
        if outcome.startswith("error:"):
            counts["invalid"] += 1
            log.warning(kv("INTENT_INVALID", {"error": outcome[6:]}))
        else:
            counts[outcome] += 1
        if metrics is not None:
            metrics.outcome("invalid" if outcome.startswith("error:") else outcome)
    sd_notify("STOPPING=1")
    log.info(kv("ROUTER_STOP", counts))
    return 0


# --- lab demo -----------------------------------------------------------------------------------
def _intent(trace_id: str, symbol: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "trace_id": trace_id,
        "symbol": symbol,
        "side": "BUY",
        "qty": "0.010",
        "price": "60000",
        "expected_move_usd": "50",
        "tp": "61000",
        "sl": "59600",
        "model": "NHiTS",
        "regime": "TREND",
        "leverage": "1",
    }
    base.update(over)
    return base


def demo_intents(run: str) -> list[dict[str, Any]]:
    """One intent meant to pass, and one held by each of four different gates."""
    return [
        _intent(
            f"demo-{run}-pass",
            "ETHUSDT",
            qty="0.050",
            price="3000",
            tp="3120",
            sl="2960",
            expected_move_usd="6",
        ),
        _intent(
            f"demo-{run}-notional",
            "XRPUSDT",
            qty="10",
            price="0.5",
            tp="0.65",
            sl="0.45",
            expected_move_usd="1",
        ),
        _intent(f"demo-{run}-edge", "BTCUSDT", expected_move_usd="0.01"),
        _intent(f"demo-{run}-rratio", "BTCUSDT", tp="60100", sl="59000"),
        _intent(f"demo-{run}-model", "BTCUSDT", model="XGBoost", regime="TREND"),
    ]


def _results(client: redis.Redis, stream: str, prefix: str) -> dict[str, dict[str, str]]:
    """Results whose trace id starts with ``prefix``; a trace id seen twice is kept as a list."""
    out: dict[str, dict[str, str]] = {}
    for _, fields in client.xrange(stream, "-", "+") or []:
        data = {streams._s(k): streams._s(v) for k, v in (fields or {}).items()}
        tid = data.get("trace_id", "")
        if tid.startswith(prefix):
            if tid in out:
                out[tid]["_duplicate"] = "true"
            else:
                out[tid] = data
    return out


def _wait_results(
    client: redis.Redis, stream: str, prefix: str, want: set[str], timeout_s: float
) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = _results(client, stream, prefix)
        if want <= set(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _exchange_orders(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url.rstrip("/") + "/_orders", timeout=10) as resp:  # noqa: S310
        data = json.load(resp)
    return list(data) if isinstance(data, list) else []


def demo(  # noqa: PLR0917 - one call site, the CLI
    client: redis.Redis,
    config: KernelConfig,
    phase: str,
    exchange_url: str,
    timeout_s: float,
    run_id: str | None,
) -> dict[str, Any]:
    streams.ensure_group(client)
    if phase == "basic":
        run = run_id or str(int(time.time()))
        client.set(DEMO_RUN_KEY, run, ex=86400)
        intents = demo_intents(run)
        published = dupes = 0
        for intent in [intents[0], *intents]:  # the first intent twice: one order must result
            if streams.publish_intent_once(client, intent) is None:
                dupes += 1
            else:
                published += 1
        client.hset(f"{DEMO_RUN_KEY}:{run}", mapping={"published": published, "duplicates": dupes})
        want = {i["trace_id"] for i in intents}
        got = _wait_results(client, config.result_stream, f"demo-{run}-", want, timeout_s)
        return {
            "phase": phase,
            "run": run,
            "published": published,
            "duplicates": dupes,
            "results": len(got),
            "complete": want <= set(got),
        }
    run = streams._s(client.get(DEMO_RUN_KEY) or "")
    if not run:
        raise RuntimeError("no demo run recorded: run --phase basic first")
    pending_tid = f"demo-{run}-pending"
    if phase == "hold-pending":
        intent = _intent(
            pending_tid, "SOLUSDT", qty="2", price="150", tp="156", sl="148", expected_move_usd="6"
        )
        entry = streams.publish_intent_once(client, intent)
        # Deliver it to the (stopped) worker's own consumer, unacked: a worker that died mid-way.
        delivered = consume.read_new(
            consume.raw_client(client), config.consumer_name, block_ms=None, count=1
        )
        client.hset(
            f"{DEMO_RUN_KEY}:{run}",
            mapping={
                "pending_published": 0 if entry is None else 1,
                "pending_entry": entry or "",
            },
        )
        return {
            "phase": phase,
            "run": run,
            "entry": entry,
            "delivered_to": config.consumer_name,
            "delivered": [e.id for e in delivered],
        }
    if phase != "verify":
        raise ValueError(f"--phase={phase}: must be basic, hold-pending or verify")
    meta = {
        streams._s(k): streams._s(v) for k, v in client.hgetall(f"{DEMO_RUN_KEY}:{run}").items()
    }
    want = {i["trace_id"] for i in demo_intents(run)} | {pending_tid}
    got = _wait_results(client, config.result_stream, f"demo-{run}-", want, timeout_s)
    orders = [
        o
        for o in _exchange_orders(exchange_url)
        if str(o.get("clientOrderId", o.get("clientAlgoId", ""))).startswith(f"demo-{run}-")
    ]
    holds: dict[str, int] = {}
    for res in got.values():
        if res.get("status") == "gate_blocked":
            holds[res.get("primary", "?")] = holds.get(res.get("primary", "?"), 0) + 1
    placed = sorted(t for t, r in got.items() if r.get("status") == "order_placed")
    order_ids = sorted(str(o.get("clientOrderId", o.get("clientAlgoId"))) for o in orders)
    info = client.xinfo_consumers(streams.STREAM, streams.GROUP)
    consumers = [
        {"name": streams._s(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
        for c in info
    ]
    pending_result = got.get(pending_tid, {})
    summary: dict[str, Any] = {
        "run": run,
        "intents_published": int(meta.get("published", 0)) + int(meta.get("pending_published", 0)),
        "duplicates_skipped": int(meta.get("duplicates", 0)),
        "orders_placed": len(orders),
        "holds_by_reason": holds,
        "results": len(got),
        "restart_recovered": bool(pending_result)
        and pending_result.get("entry_id") == meta.get("pending_entry"),
        "pending_intent_status": pending_result.get("status", "missing"),
        "consumers": consumers,
        "results_by_trace": {
            t: r.get("status", "") + ("" if "_duplicate" not in r else "+DUP")
            for t, r in sorted(got.items())
        },
        "checks": {
            "every_intent_one_result": want <= set(got)
            and not any("_duplicate" in r for r in got.values()),
            "orders_match_placed_results": order_ids == placed,
            "duplicate_intent_one_order": order_ids.count(f"demo-{run}-pass") <= 1,
            "no_pending_left": all(c["pending"] == 0 for c in consumers),
        },
    }
    summary["ok"] = all(summary["checks"].values()) and summary["restart_recovered"]
    return summary


# --- console entry ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quantum-strategy-router",
        description="Reference strategy router: publishes intents once (publish_intent_once).",
    )
    parser.add_argument("--config", default=None, help="env file (default $CORE_GATES_ENV)")
    parser.add_argument("--redis-url", default=None, help="override CORE_KERNEL_REDIS_URL")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish JSON lines from a file or stdin")
    pub.add_argument("source", nargs="?", default="-")
    sub.add_parser("serve", help=f"long-running: publish JSON intents pushed to {INBOX}")
    dem = sub.add_parser("demo", help="lab pipeline demonstration")
    dem.add_argument("--phase", required=True, choices=["basic", "hold-pending", "verify"])
    dem.add_argument("--exchange-url", default=None, help="fake exchange root URL")
    dem.add_argument("--timeout", type=float, default=60.0)
    dem.add_argument("--run-id", default=None)
    dem.add_argument("--out", default=None, help="write the JSON summary here too")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    config = load_service_config(args.config, sys.stderr)
    if config is None:
        return 2
    # Named in errors without its password; the variable is not reused for the exchange URL.
    if args.redis_url:
        where = f"--redis-url={redact_url(args.redis_url)}"
    else:
        where = f"{target_key(config)}={target_from_config(config).describe()}"
    try:
        url = check_redis_url(args.redis_url) if args.redis_url else None
        client = streams.make_client(target_from_config(config, url), socket_timeout=30)
    except ValueError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "publish":
            counts = publish_lines(client, _lines(args.source))
            _print(counts, sys.stdout)
            return 1 if counts["invalid"] else 0
        if args.command == "serve":
            metrics = None
            if config.router_metrics_listen:
                metrics = RouterMetrics()
                metrics_serve(metrics.registry, config.router_metrics_listen, "strategy-router")
            return serve(client, metrics=metrics)
        url = args.exchange_url or (config.binance_futures_url or "http://127.0.0.1:18080/fapi")
        url = url.removesuffix("/").removesuffix("/fapi")
        summary = demo(client, config, args.phase, url, args.timeout, args.run_id)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2, sort_keys=True)
                fh.write("\n")
        _print(summary, sys.stdout)
        return 0 if summary.get("ok", True) is True and summary.get("complete", True) is True else 1
    except redis.RedisError as exc:
        print(f"{where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _print(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, sort_keys=True) + "\n")
    out.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
