"""``core-kernel`` subcommands. Every failure is one line naming the option, file, key or URL
and the reason, never a traceback. Exit codes (every subcommand):

* 0 ok;
* 1 the check failed: gate-proof with a failing case, recover that could not do its job,
  evaluate with a line that is not a JSON object, ``protect --once`` with a protection
  tripped (or tripping audit-only) or the equity unreadable, ``resume`` refused while the
  daily loss limit stands;
* 2 bad config (check-config's lines), a bad option value or a bad ``--redis-url``;
* 3 Redis unreachable (evaluate: only when refused at start; a stall is HOLD per line);
* 4 another Redis error (e.g. a key of the wrong type);
* 130 interrupted.

``restore`` has its own codes (0 restored, 1 still differs, 2 refused, 3 damaged backup, 4 failed
part-way): see core_kernel.restore, which ROLLBACK.sh also runs without this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core_kernel import __version__, gates, proof, protect, restore
from core_kernel.config import (
    ConfigError,
    KernelConfig,
    check_redis_url,
    load_config,
    redact_url,
    resolve_path,
    shown,
)
from core_kernel.exchange import from_config
from core_kernel.gates import jsonable
from core_kernel.health import stream_health
from core_kernel.intent import IntentError, loads_json, parse_intent
from core_kernel.log import setup_logging
from core_kernel.metrics import SweepRun, stream_metrics, write_sweep_textfile
from core_kernel.mode import ModeReport, TradingMode, detect_mode, report_for
from core_kernel.proof import render_table, run_proof
from core_kernel.protections import Limits
from core_kernel.recovery import FileEventLog, RecoverySummary, recover
from core_kernel.redis_client import make_client, target_from_config, target_key
from core_kernel.store import KernelStore, admit_script
from core_kernel.streams import GROUP, redis_down
from core_kernel.trading_state import (
    TradingState,
    audit_log,
    check_reason,
    parse_state,
    read_state,
    set_state,
)

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_REDIS_DOWN, EXIT_REDIS_ERROR = 0, 1, 2, 3, 4

_EVAL_EXTRA = {"seconds_since_last_trade", "trades_last_10min"}
#: situation fields of ``evaluate`` that are not state-gate what-ifs (issue 14)
_EVAL_SITUATION = {"trading_state"}
#: what the exchange would say, for PRICE_COLLAR / MAX_POSITION (issue 14): without them the
#: limits that are on hold (no market data), as they do with an exchange that does not answer
_EVAL_MARKET = ("mark_price", "position_notional_usd", "gross_exposure_usd")


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(jsonable(data), sort_keys=False) + "\n")


class UsageError(Exception):
    """A bad command-line value: one line naming the option and why (exit 2)."""


def _checked_url(url: str) -> str:
    try:
        return check_redis_url(url)
    except ValueError as exc:
        raise UsageError(f"--redis-url={redact_url(url)}: {exc}") from None


def _client(target: str | KernelConfig, *, timeout: float = 10.0) -> redis.Redis:
    """A client for a checked ``--redis-url`` or the config's target (URL or Sentinel)."""
    # No retries: a command's time is bounded by its own timeout, not by retries x timeout.
    return make_client(
        target,
        socket_connect_timeout=min(3.0, timeout),
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _load(args: argparse.Namespace) -> KernelConfig:
    return load_config(getattr(args, "config", None))


def _config_dump(config: KernelConfig) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, fld in KernelConfig.model_fields.items():
        key = str(fld.alias or name)
        data[key] = shown(key, getattr(config, name))
    return data


def derived_errors(config: KernelConfig) -> list[str]:
    """Build what the services build from a config (gate thresholds, the admit script, the
    gate-proof inputs, the Redis connection parameters); every failure as one line.

    So "OK" from check-config means the gates, the sweep, the worker and gate-proof all start.
    """
    errors: list[str] = []
    try:
        params = config.gate_params()
        admit_script(params)
        builder = proof._Builder(config)
        for name, _desc, _verdict, _reasons, _spec in proof._cases(builder):
            del name
    except (ArithmeticError, ValueError) as exc:
        # decimal's messages are a list of signal classes: name the class, not the repr.
        errors.append(
            "MIN_NOTIONAL_USD/EDGE_MULTIPLIER/MIN_R_*: the gate and gate-proof values derived "
            f"from them cannot be computed exactly ({type(exc).__name__})"
        )
    try:
        # What the services build (no I/O): the URL's pool, or the Sentinel manager and pool.
        make_client(config).close()
    except (ValueError, TypeError) as exc:
        target = target_from_config(config)
        errors.append(f"{target_key(config)}={target.describe()}: {exc}")
    return errors


def cmd_check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = resolve_path(args.config, os.environ)
    try:
        config = _load(args)
        derived = derived_errors(config)
        if derived:
            raise ConfigError(derived)
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
    log = _GuardedLog(FileEventLog(log_path, fallback=err))
    if log.error:
        err.write(f"recover: {log.error}; logging to stderr\n")
    client = _client(_checked_url(args.redis_url) if args.redis_url else config)
    started = time.time()
    textfile = _SweepTextfile(args.textfile, started, err)
    try:
        summary = recover(client, config, mode, log)
        textfile.write(summary, _sweep_health(client, config))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        text = redis_down(exc)[1]
        log("RECOVER_FAILED", {"error": text})
        textfile.write(None, {})
        _print_json({"ok": False, "error": text, "mode": mode.mode}, out)
        return EXIT_REDIS_DOWN
    except redis.RedisError as exc:
        log("RECOVER_FAILED", {"error": f"{type(exc).__name__}: {exc}"})
        textfile.write(None, {})
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


def _sweep_health(client: redis.Redis, config: KernelConfig) -> dict[str, float]:
    """The stream gauges for the textfile; {} when they cannot be read (the sweep's own result
    stands: a failed health read after a good sweep is not a failed sweep)."""
    try:
        health = stream_health(client, dead_letter_stream=config.dead_letter_stream)
    except redis.RedisError:
        return {}
    return stream_metrics(health, GROUP)


class _SweepTextfile:
    """The sweep's textfile for node_exporter (``--textfile``), written on every run, a failed
    one too. Writing it never changes the sweep's exit code: a write error is one stderr line,
    and the stale file then makes the "sweep not succeeding" alert fire."""

    def __init__(self, path: str | None, started: float, err: TextIO) -> None:
        self.path = Path(path) if path else None
        self.started = started
        self.err = err

    def write(self, summary: RecoverySummary | None, health: dict[str, float]) -> None:
        if self.path is None:
            return
        ok = summary is not None and summary.ok
        counts = {"errors": 0 if ok else 1}
        if summary is not None:
            counts.update(
                reclaimed=summary.reclaimed,
                dead_lettered=summary.dead_lettered,
                zombies_deleted=len(summary.zombies_deleted),
            )
        run = SweepRun(self.started, time.time(), ok, counts, health)
        try:
            write_sweep_textfile(self.path, run)
        except OSError as exc:
            self.err.write(f"recover: --textfile {self.path}: {exc.strerror or exc}\n")


class _GuardedLog:
    """The sweep's event log. A full or failing disk (``--log /dev/full``) never stops the sweep
    or its JSON summary: the first write error is kept and later lines go to stderr."""

    def __init__(self, inner: FileEventLog) -> None:
        self.inner = inner
        self.error = inner.error

    def __call__(self, event: str, fields: Any) -> None:
        try:
            self.inner(event, fields)
        except OSError as exc:
            if not self.error:
                self.error = f"cannot write {self.inner.path}: {exc.strerror or exc}"
            self._drop_file()
            with contextlib.suppress(OSError):
                self.inner(event, fields)  # now to the fallback stream

    def _drop_file(self) -> None:
        with contextlib.suppress(OSError):
            self.inner.close()
        self.inner._fh = None  # a failed close leaves it set: write to the fallback from now on

    def close(self) -> None:
        try:
            self.inner.close()
        except OSError as exc:  # buffered lines that could not be flushed
            if not self.error:
                self.error = f"cannot write {self.inner.path}: {exc.strerror or exc}"
            self.inner._fh = None


def cmd_stream_health(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args)
    client = _client(_checked_url(args.redis_url) if args.redis_url else config)
    try:
        data = stream_health(
            client,
            zombie_idle_ms=config.zombie_idle_ms,
            dead_letter_stream=config.dead_letter_stream,
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        _print_json({"ok": False, "error": redis_down(exc)[1]}, out)
        return EXIT_REDIS_DOWN
    finally:
        client.close()
    _print_json(data, out)
    return EXIT_OK


def cmd_gate_proof(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args)
    derived = derived_errors(config)
    if derived:
        raise ConfigError(derived)
    client = _client(_checked_url(args.redis_url) if args.redis_url else config)
    try:
        results = run_proof(client, config)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err.write(f"gate-proof: {redis_down(exc)[1]}\n")
        if args.json:
            _print_json({"ok": False, "error": redis_down(exc)[1]}, out)
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


MAX_LINE_BYTES = 64 * 1024


def _input_lines(stream: Any) -> Iterator[tuple[int, bytes | str | None]]:
    """(line number, line) from stdin read as bytes; None for a line over MAX_LINE_BYTES.

    A long line is consumed to its end and reported, so the lines after it are still read.
    """
    source = getattr(stream, "buffer", stream)
    lineno = 0
    while True:
        line = source.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(
            b"\n" if isinstance(line, bytes) else "\n"
        ):
            while True:
                rest = source.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n" if isinstance(rest, bytes) else "\n"):
                    break
            yield lineno, None
            continue
        yield lineno, line


def _situation_state(data: dict[str, Any]) -> str | None:
    """The what-if ``trading_state`` field, removed from ``data`` (None: not given)."""
    if "trading_state" not in data:
        return None
    try:
        return parse_state(data.pop("trading_state")).value
    except ValueError as exc:
        raise ValueError(f"trading_state: {exc}") from None


def _situation_market(data: dict[str, Any]) -> gates.Market | None:
    """The what-if market fields, removed from ``data`` (None: none given)."""
    if not data.keys() & set(_EVAL_MARKET):
        return None
    values: list[Decimal | None] = []
    for name in _EVAL_MARKET:
        raw = data.pop(name, None)
        if raw is None:
            values.append(None)
            continue
        low = "> 0" if name == "mark_price" else ">= 0"
        if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
            raise ValueError(f"{name}: must be a JSON number {low} or null")
        value = Decimal(raw)
        if (
            not value.is_finite()
            or value < 0
            or (name == "mark_price" and value == 0)
            or value.adjusted() > 14
        ):
            raise ValueError(f"{name}: must be a number {low} and below 1e15")
        values.append(value)
    mark, pos, gross = values
    return gates.Market(
        mark,
        pos,
        gross,
        None if mark is not None else "mark_price not given",
        None
        if pos is not None and gross is not None
        else "position_notional_usd and gross_exposure_usd: both needed",
    )


def _what_if(data: dict[str, Any]) -> tuple[Decimal | None, int] | None:
    """The what-if state fields, removed from ``data``; None when neither was given."""
    if not _EVAL_EXTRA & data.keys():
        return None
    since: Decimal | None = None
    raw = data.pop("seconds_since_last_trade", None)
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
            raise ValueError("seconds_since_last_trade: must be a JSON number >= 0 or null")
        since = Decimal(raw)
        if not since.is_finite() or since < 0 or since.adjusted() > 12:
            raise ValueError("seconds_since_last_trade: must be a number in 0 .. 1e12")
    raw = data.pop("trades_last_10min", 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 10**9:
        raise ValueError("trades_last_10min: must be an integer in 0 .. 1e9")
    return since, raw


class _Deadline:
    """The overall deadline of one evaluate run: past it, no more Redis calls are made."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() >= self.end


def cmd_evaluate(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: Any = None) -> int:
    config = _load(args)
    params = config.gate_params()
    report: ModeReport = (
        report_for(TradingMode(args.mode)) if args.mode else detect_mode(config.mode_env())
    )
    mode = report.mode
    store = None
    deadline = _Deadline(args.deadline)
    if args.redis_url:
        url = _checked_url(args.redis_url)
        client = _client(url, timeout=args.timeout)
        # Refused: exit 3 now rather than a HOLD on every line. Stalled: every line answers
        # HOLD STATE_UNAVAILABLE within its timeout, and none after the overall deadline.
        with contextlib.suppress(redis.TimeoutError):
            client.ping()
        store = KernelStore(client, config, report)
    failures = 0
    for lineno, line in _input_lines(stdin or getattr(args, "stdin", None) or sys.stdin):
        if line is None:
            failures += 1
            _print_json({"line": lineno, "error": f"line longer than {MAX_LINE_BYTES} bytes"}, out)
            continue
        if not line.strip():
            continue
        try:
            data = loads_json(line)
            if not isinstance(data, dict):
                raise ValueError("each line must be a JSON object")
            what_if, situation_state, market = (
                _what_if(data),
                _situation_state(data),
                _situation_market(data),
            )
        except ValueError as exc:
            failures += 1
            _print_json({"line": lineno, "error": str(exc)}, out)
            continue
        try:
            intent = parse_intent(data)
        except IntentError as exc:
            decision = gates.rejected(exc, mode)
        else:
            if what_if is not None or situation_state is not None or store is None:
                # What-if: the situation as given, nothing read from Redis.
                partial = gates.judge(intent, params, mode, market)
                if situation_state is not None:
                    hold = gates.state_reason(situation_state, partial.exit_only)
                    gates.apply_trading_state(partial, situation_state, hold)
                state = (
                    None if what_if is None else gates.what_if_state(what_if[0], what_if[1], params)
                )
                decision = gates.finish(partial, params, mode, state)
            elif deadline.passed():
                partial = gates.judge(intent, params, mode, market)
                partial.ctx["state_error"] = f"overall deadline of {args.deadline} s passed"
                decision = gates.finish(partial, params, mode, None, unavailable=True)
            else:
                decision = store.evaluate(intent, market)
        result = decision.to_dict()
        result["line"] = lineno
        _print_json(result, out)
    return EXIT_FAIL if failures else EXIT_OK


def _state_client(args: argparse.Namespace) -> redis.Redis:
    config = _load(args)
    return _client(_checked_url(args.redis_url) if args.redis_url else config)


def cmd_state(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    client = _state_client(args)
    try:
        view = read_state(client)
        history = audit_log(client, count=args.history) if args.history else []
        trips = protect.active_trips(client)
    finally:
        client.close()
    data = view.to_dict()
    if trips:
        data["protection_trips"] = trips
    if args.json:
        if args.history:
            data["history"] = history
        _print_json(data, out)
        return EXIT_OK
    line = view.state.value
    if "at_ms" in view.raw:
        line += (
            f" since at_ms={view.raw['at_ms']} by {view.raw.get('user', '?')}"
            f"@{view.raw.get('host', '?')} from {view.raw.get('from', '?')}: "
            f"{view.raw.get('reason', '')}"
        )
    elif view.state is TradingState.ACTIVE:
        line += " (never set)"
    if view.error:
        line += f" ({view.error}: read as HALTED)"
    out.write(line + "\n")
    for code, trip in trips.items():
        detail = trip.get("reason", "") if isinstance(trip, dict) else trip
        out.write(f"  protection trip {code}: {detail}\n")
    for entry in history:
        out.write(
            f"  {entry['id']} {entry.get('from')} -> {entry.get('to')} "
            f"by {entry.get('user')}@{entry.get('host')}: {entry.get('reason')}\n"
        )
    return EXIT_OK


def cmd_set_state(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    target = {"halt": TradingState.HALTED, "reduce": TradingState.REDUCING}.get(
        args.command, TradingState.ACTIVE
    )
    try:
        reason = check_reason(args.reason)
    except ValueError as exc:
        raise UsageError(f"--reason: {exc}") from None
    setup_logging()  # the TRADING_STATE_CHANGED line goes to stderr (journald under Ansible)
    client = _state_client(args)
    try:
        if target is TradingState.ACTIVE:
            # resume also re-arms the protections (new high-water mark, trips cleared).
            change = protect.resume(client, reason, force=args.force, source=args.source).change
        else:
            change = set_state(client, target, reason, source=args.source)
    except protect.ResumeRefused as exc:
        err.write(f"resume: {exc}\n")
        return EXIT_FAIL
    finally:
        client.close()
    data = {
        "changed": change.changed,
        "from": change.before.value,
        "to": change.after.value,
        "at_ms": change.at_ms,
        "audit_id": change.audit_id,
        "reason": reason,
    }
    if args.json:
        _print_json(data, out)
    elif change.changed:
        out.write(f"{change.before.value} -> {change.after.value} (audit {change.audit_id})\n")
    else:
        out.write(f"{change.after.value} already; nothing changed\n")
    return EXIT_OK


def cmd_protect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args)
    report = detect_mode(config.mode_env())
    if args.interval >= config.protection_stale_seconds:
        raise UsageError(
            f"--interval={args.interval:g}: must be below PROTECTION_STALE_SECONDS="
            f"{config.protection_stale_seconds}"
        )
    setup_logging()
    try:
        exchange = from_config(
            config,
            testnet=report.mode is not TradingMode.LIVE,
            timeout_s=5.0,
            max_attempts=1,
            time_sync_s=config.exchange_time_sync_s,
        )
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    client = _state_client(args)
    protector = protect.Protector(
        client,
        exchange,
        Limits.from_config(config),
        enforce=report.mode is not TradingMode.LIVE or config.protection_live_enabled,
        mode=report.mode.value,
    )
    stop = threading.Event()
    if not args.once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        return protect.run(
            protector,
            once=args.once,
            interval_s=args.interval,
            as_json=args.json,
            out=out,
            stop=stop,
        )
    finally:
        client.close()


def cmd_version(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(f"core-kernel {__version__}\n")
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 and <= 3600 seconds")
    return value


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer in 0 .. 1000")
    return int(text)


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - a few lines per subcommand
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
    p.add_argument(
        "--textfile",
        metavar="PATH",
        help="write the sweep's metrics here for node_exporter's textfile collector",
    )
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
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=2.0,
        metavar="S",
        help="per-line Redis deadline (default 2 s)",
    )
    p.add_argument(
        "--deadline",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="overall Redis deadline; later lines are HOLD STATE_UNAVAILABLE (default 60 s)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("state", parents=[common], help="show the trading state (issue 14)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--redis-url", metavar="URL")
    p.add_argument(
        "--history", type=_count, default=0, metavar="N", help="also the last N audit entries"
    )
    p.set_defaults(func=cmd_state)

    for name, text in (
        ("halt", "HALTED: nothing new passes admit, in every mode"),
        ("reduce", "REDUCING: only reduce-only exits pass admit, in every mode"),
        ("resume", "ACTIVE: the gates decide again"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--reason", required=True, metavar="TEXT", help="why (audit and log)")
        p.add_argument("--json", action="store_true")
        p.add_argument("--redis-url", metavar="URL")
        p.add_argument(
            "--source", default="cli", choices=["cli", "playbook"], help=argparse.SUPPRESS
        )
        if name == "resume":
            p.add_argument(
                "--force",
                action="store_true",
                help="also while the daily loss limit stands (it stays off until 00:00 UTC)",
            )
        p.set_defaults(func=cmd_set_state, force=False)

    p = sub.add_parser(
        "protect", parents=[common], help="poll equity and PnL; trip the protections (issue 14)"
    )
    p.add_argument("--once", action="store_true", help="one poll, then exit (a timer's run)")
    p.add_argument(
        "--interval", type=_seconds, default=30.0, metavar="S", help="between polls (30 s)"
    )
    p.add_argument("--json", action="store_true", help="one JSON line per poll")
    p.add_argument("--redis-url", metavar="URL")
    p.set_defaults(func=cmd_protect)

    # restore (issue 12 item 8): the one rollback, also run by rollback.yml and ROLLBACK.sh
    restore.add_subcommand(sub)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, config=None)
    return parser


def _url_from_stdin(args: argparse.Namespace, stdin: Any) -> None:
    """``--redis-url -``: the URL is the first line of stdin, so a password in it never stands
    on a command line (``ps``); for every command but ``evaluate``, whose stdin is intents."""
    if getattr(args, "redis_url", None) != "-":
        return
    if args.command == "evaluate":
        raise UsageError("--redis-url=-: evaluate reads its intents on stdin; give the URL")
    line = (stdin or sys.stdin).readline().strip()
    if not line:
        raise UsageError("--redis-url=-: no URL on stdin")
    args.redis_url = line


def main(argv: Sequence[str] | None = None, *, stdin: Any = None) -> int:
    """Run one subcommand; ``stdin`` replaces sys.stdin for ``evaluate`` (tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.stdin = stdin
    out, err = sys.stdout, sys.stderr
    try:
        _url_from_stdin(args, stdin)
        return int(args.func(args, out, err))
    except ConfigError as exc:
        for line in exc.errors:
            err.write(f"config error: {line}\n")
        return EXIT_CONFIG
    except UsageError as exc:
        err.write(f"{args.command}: {exc}\n")
        return EXIT_CONFIG
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err.write(f"{args.command}: {redis_down(exc)[1]}\n")
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
