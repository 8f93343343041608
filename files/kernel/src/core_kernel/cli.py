"""``core-kernel`` subcommands. User errors print a clear message and exit non-zero, never a
traceback. Exit codes: 0 ok, 1 the check failed (gate-proof, evaluate line errors),
2 bad config or usage, 3 Redis unreachable, 4 other Redis error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

import redis

from core_kernel import __version__
from core_kernel.config import ConfigError, KernelConfig, load_config, resolve_path
from core_kernel.gates import Intent, Situation, evaluate, jsonable
from core_kernel.health import stream_health
from core_kernel.mode import ModeReport, TradingMode, detect_mode, report_for
from core_kernel.proof import render_table, run_proof
from core_kernel.recovery import FileEventLog, recover
from core_kernel.store import KernelStore

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_REDIS_DOWN, EXIT_REDIS_ERROR = 0, 1, 2, 3, 4

_SECRET_KEYS = {"binance_api_key", "binance_api_secret"}
_EVAL_EXTRA = {"seconds_since_last_trade", "trades_last_10min"}


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(jsonable(data), sort_keys=False) + "\n")


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10
    )


def _load(args: argparse.Namespace) -> KernelConfig:
    return load_config(getattr(args, "config", None))


def _config_dump(config: KernelConfig) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, fld in KernelConfig.model_fields.items():
        value = getattr(config, name)
        if name in _SECRET_KEYS and value:
            value = "***"
        data[str(fld.alias or name)] = value
    return data


def cmd_check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = resolve_path(args.config, os.environ)
    try:
        config = _load(args)
    except ConfigError as exc:
        if args.json:
            _print_json({"ok": False, "path": str(path), "errors": exc.errors}, out)
        else:
            for line in exc.errors:
                out.write(line + "\n")
            err.write(f"check-config: {len(exc.errors)} error(s) in {path or 'environment'}\n")
        return EXIT_CONFIG
    if args.json:
        _print_json({"ok": True, "path": str(path), "config": _config_dump(config)}, out)
    else:
        source = str(path) if path else "defaults + environment (no env file)"
        out.write(f"OK {source}\n")
    return EXIT_OK


def cmd_mode(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args)
    report = detect_mode(config.mode_env())
    if args.json:
        _print_json(report.to_dict(), out)
    else:
        src = " ".join(f"{k}={v}" for k, v in report.sources.items()) or "(no source set)"
        out.write(
            f"{report.mode.value} enforce={str(report.enforce).lower()} "
            f"may_mutate={str(report.may_mutate).lower()} {src}"
            + (f" ({report.detail})" if report.detail else "")
            + "\n"
        )
    return EXIT_OK


def cmd_recover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        _print_json({"ok": False, "error": "config", "errors": exc.errors}, out)
        return EXIT_CONFIG
    mode = detect_mode(config.mode_env())
    log_path = args.log or config.stream_recover_log
    log = FileEventLog(log_path, fallback=err)
    if log.error:
        err.write(f"recover: {log.error}; logging to stderr\n")
    client = _client(args.redis_url or config.redis_url)
    try:
        summary = recover(client, config, mode, log)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log("RECOVER_FAILED", {"error": f"redis unreachable: {exc}"})
        _print_json({"ok": False, "error": f"redis unreachable: {exc}", "mode": mode.mode}, out)
        return EXIT_REDIS_DOWN
    except redis.RedisError as exc:
        log("RECOVER_FAILED", {"error": f"{type(exc).__name__}: {exc}"})
        _print_json({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, out)
        return EXIT_REDIS_ERROR
    finally:
        log.close()
        client.close()
    data = summary.to_dict()
    if log.error:
        data["log_error"] = log.error
    _print_json(data, out)
    return EXIT_OK if summary.ok else EXIT_FAIL


def cmd_stream_health(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args)
    client = _client(args.redis_url or config.redis_url)
    try:
        data = stream_health(client, zombie_idle_ms=config.zombie_idle_ms)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        _print_json({"ok": False, "error": f"redis unreachable: {exc}"}, out)
        return EXIT_REDIS_DOWN
    finally:
        client.close()
    _print_json(data, out)
    return EXIT_OK


def cmd_gate_proof(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args)
    client = _client(args.redis_url or config.redis_url)
    try:
        results = run_proof(client, config)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err.write(f"gate-proof: redis unreachable: {exc}\n")
        if args.json:
            _print_json({"ok": False, "error": f"redis unreachable: {exc}"}, out)
        return EXIT_REDIS_DOWN
    finally:
        client.close()
    ok = bool(results) and all(r.ok for r in results)
    if args.json:
        _print_json(
            {
                "ok": ok,
                "passed": sum(r.ok for r in results),
                "total": len(results),
                "cases": [r.__dict__ for r in results],
            },
            out,
        )
    else:
        out.write(render_table(results) + "\n")
    return EXIT_OK if ok else EXIT_FAIL


def _situation_from(data: dict[str, Any], base: Situation) -> Situation:
    since: Decimal | None = base.seconds_since_last_trade
    count = base.trades_in_window
    if "seconds_since_last_trade" in data:
        raw = data["seconds_since_last_trade"]
        if raw is None:
            since = None
        else:
            try:
                since = Decimal(str(raw))
            except InvalidOperation:
                raise ValueError(f"seconds_since_last_trade={raw!r}: not a number") from None
            if not since.is_finite() or since < 0:
                raise ValueError(f"seconds_since_last_trade={raw!r}: must be a number >= 0")
    if "trades_last_10min" in data:
        raw = data["trades_last_10min"]
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise ValueError(f"trades_last_10min={raw!r}: must be an integer >= 0")
        count = raw
    return Situation(since, count, base.available)


def cmd_evaluate(
    args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO | None = None
) -> int:
    config = _load(args)
    params = config.gate_params()
    report: ModeReport = (
        report_for(TradingMode(args.mode)) if args.mode else detect_mode(config.mode_env())
    )
    store = None
    if args.redis_url:
        client = _client(args.redis_url)
        client.ping()  # unreachable: exit 3 now rather than a slow error on every line
        store = KernelStore(client, config, report)
    known = set(Intent.FIELDS) | _EVAL_EXTRA
    failures = 0
    for lineno, line in enumerate(stdin or sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line, parse_float=Decimal)
            if not isinstance(data, dict):
                raise ValueError("each line must be a JSON object")
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(
                    "unknown field(s) "
                    + ", ".join(unknown)
                    + "; known: "
                    + ", ".join(sorted(known))
                )
            base = Situation()
            if store is not None and isinstance(data.get("symbol"), str) and data["symbol"]:
                try:
                    base = store.situation(data["symbol"])
                except redis.RedisError:
                    base = Situation.unavailable()
            situation = _situation_from(data, base)
            intent = Intent.from_mapping({k: v for k, v in data.items() if k in Intent.FIELDS})
        except json.JSONDecodeError as exc:
            failures += 1
            _print_json({"line": lineno, "error": f"bad JSON: {exc}"}, out)
            continue
        except (ValueError, TypeError) as exc:
            failures += 1
            _print_json({"line": lineno, "error": str(exc)}, out)
            continue
        decision = evaluate(intent, situation, params, report.mode)
        result = decision.to_dict()
        result["line"] = lineno
        _print_json(result, out)
    return EXIT_FAIL if failures else EXIT_OK


def cmd_version(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(f"core-kernel {__version__}\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="env file (default: $CORE_GATES_ENV, else /etc/quantum/core_gates.env)",
    )
    parser = argparse.ArgumentParser(
        prog="core-kernel", description="Core trading kernel: gates, recovery, evidence."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", parents=[common], help="validate the config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("mode", parents=[common], help="show the detected trading mode")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mode)

    p = sub.add_parser("recover", parents=[common], help="one stream recovery sweep")
    p.add_argument("--json", action="store_true", help="(the summary is always JSON)")
    p.add_argument("--redis-url", metavar="URL")
    p.add_argument("--log", metavar="PATH", help="event log (default: STREAM_RECOVER_LOG)")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("stream-health", parents=[common], help="JSON snapshot of the stream")
    p.add_argument("--redis-url", metavar="URL")
    p.set_defaults(func=cmd_stream_health)

    p = sub.add_parser("gate-proof", parents=[common], help="run the gate proof cases")
    p.add_argument("--json", action="store_true")
    p.add_argument("--redis-url", metavar="URL")
    p.set_defaults(func=cmd_gate_proof)

    p = sub.add_parser("evaluate", parents=[common], help="what-if: JSON lines in, decisions out")
    p.add_argument("--mode", choices=["TESTNET", "LIVE"], type=str.upper)
    p.add_argument("--redis-url", metavar="URL", help="read cooldown/rate state (read-only)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, config=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        return int(args.func(args, out, err))
    except ConfigError as exc:
        for line in exc.errors:
            err.write(f"config error: {line}\n")
        return EXIT_CONFIG
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err.write(f"{args.command}: redis unreachable: {exc}\n")
        return EXIT_REDIS_DOWN
    except redis.RedisError as exc:
        err.write(f"{args.command}: redis error: {type(exc).__name__}: {exc}\n")
        return EXIT_REDIS_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
