"""The operator's trading state (issue 14): ACTIVE, REDUCING (only reduce-only exits pass) or
HALTED (nothing new passes), shared by every worker and host on one Redis.

The state lives in the hash ``quantum:kernel:trading_state`` (``state``, ``reason``, ``user``,
``host``, ``source``, ``at_ms`` on Redis's clock, ``from``, ``audit_id``). admit.lua reads it in
the same script that decides and records, so a change is enforced from the next admit on, in
every mode (it is the operator's command, not a gate's opinion). What the script finds there:
no key = ACTIVE (never set); the three names = themselves; anything else (another value,
another type) = HALTED. Every change is one script (set_trading_state.lua): the new state and
an entry on the audit stream ``quantum:stream:trading_state.audit`` (who, host, when, from,
to, why) together, and one ``TRADING_STATE`` log line.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from core_kernel.log import kv
from core_kernel.streams import DEFAULT_PREFIX, load_lua

log = logging.getLogger("core_kernel.trading_state")

#: Longest reason an operator may give (it goes into the log, the audit stream and the report).
MAX_REASON_CHARS = 500
#: Audit entries kept (approximate MAXLEN); years of operator changes.
AUDIT_MAXLEN = 100_000


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


def state_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}kernel:trading_state"


def audit_stream(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}stream:trading_state.audit"


def parse_state(value: Any) -> TradingState:
    """An operator's or a what-if's state name (exact, upper case); ValueError otherwise."""
    if isinstance(value, str) and value in TradingState.__members__:
        return TradingState(value)
    raise ValueError("must be one of ACTIVE, REDUCING, HALTED")


def check_reason(text: str) -> str:
    """The operator's reason: required, one printable line (it goes into logs and reports)."""
    if not text.strip():
        raise ValueError("must not be empty")
    if len(text) > MAX_REASON_CHARS:
        raise ValueError(f"must be at most {MAX_REASON_CHARS} characters")
    if not text.isprintable():
        raise ValueError("must be one line of printable characters")
    return text


def operator() -> tuple[str, str]:
    """(user, host) of the process making a change; under sudo the user who ran sudo too."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid:{os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo != user:
        user = f"{sudo} (as {user})"
    return user, socket.gethostname()


@dataclass(frozen=True)
class StateView:
    """The stored state as admit.lua reads it, with the record of its last change."""

    state: TradingState
    raw: dict[str, str]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state.value}
        for key in ("reason", "user", "host", "source", "at_ms", "from", "audit_id"):
            if key in self.raw:
                data[key] = self.raw[key]
        if self.error:
            data["error"] = self.error
        return data


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_state(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> StateView:
    """The stored state, read the way admit.lua reads it (for the CLI and the report)."""
    key = state_key(prefix)
    try:
        raw = client.hgetall(key)
    except redis.ResponseError as exc:
        return StateView(TradingState.HALTED, {}, f"{key}: {exc}")
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return StateView(TradingState.ACTIVE, {})
    try:
        return StateView(parse_state(fields.get("state")), fields)
    except ValueError:
        return StateView(TradingState.HALTED, fields, f"{key}: unknown state value")


@dataclass(frozen=True)
class Change:
    before: TradingState
    after: TradingState
    at_ms: int
    audit_id: str | None  # None: the state was already this, nothing written

    @property
    def changed(self) -> bool:
        return self.audit_id is not None


def set_state(
    client: redis.Redis,
    new: TradingState,
    reason: str,
    *,
    source: str = "cli",
    prefix: str = DEFAULT_PREFIX,
    who: tuple[str, str] | None = None,
) -> Change:
    """Move to ``new`` with the audit entry, atomically; a no-op when already there."""
    reason = check_reason(reason)
    user, host = who or operator()
    script = client.register_script(load_lua("set_trading_state.lua"))
    reply = script(
        keys=[state_key(prefix), audit_stream(prefix)],
        args=[new.value, reason, user, host, source, AUDIT_MAXLEN],
    )
    before, after, at_ms, audit_id = (_text(v) for v in reply)
    change = Change(TradingState(before), TradingState(after), int(at_ms), audit_id or None)
    log_change(change, (user, host), source, reason)
    return change


def log_change(change: Change, who: tuple[str, str], source: str, reason: str) -> None:
    """The one TRADING_STATE line of a change (also for protect.py's resume and trips)."""
    log.warning(
        kv(
            "TRADING_STATE_CHANGED" if change.changed else "TRADING_STATE_UNCHANGED",
            {
                "from": change.before.value,
                "to": change.after.value,
                "user": who[0],
                "host": who[1],
                "source": source,
                "at_ms": change.at_ms,
                "audit_id": change.audit_id,
                "reason": reason,
            },
        )
    )


def audit_log(
    client: redis.Redis, prefix: str = DEFAULT_PREFIX, count: int = 20
) -> list[dict[str, str]]:
    """The latest audit entries, newest first."""
    entries = client.xrevrange(audit_stream(prefix), count=count)
    return [
        {"id": _text(eid), **{_text(k): _text(v) for k, v in (fields or {}).items()}}
        for eid, fields in entries  # type: ignore[union-attr]
    ]
