"""The env contract: ``/etc/quantum/core_gates.env`` then the process environment on top.

Rules (see README): the file is parsed the way systemd's ``EnvironmentFile=`` reads it, because
the services load the same file through their drop-ins - so ``check-config`` judges exactly the
values a service will see. A key the kernel does not know, in the file, is an error (a typo must
never fall back to a default). From the process environment only known keys are taken.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TextIO
from urllib.parse import parse_qsl, urlencode, urlparse

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core_kernel.gates import GateParams, parse_allowed_models
from core_kernel.intent import NUMBER_PATTERN
from core_kernel.mode import FALSE_TEXTS, TRUE_TEXTS

DEFAULT_PATH = Path("/etc/quantum/core_gates.env")
PATH_ENV_VAR = "CORE_GATES_ENV"
KERNEL_REDIS_URL_KEY = "CORE_KERNEL_REDIS_URL"
SENTINELS_KEY = "CORE_KERNEL_REDIS_SENTINELS"
#: The application's Redis URL: used by the kernel only when CORE_KERNEL_REDIS_URL is not set.
APP_REDIS_URL_KEY = "REDIS_URL"

DEFAULT_ALLOWED_MODELS = (
    "TREND:NHiTS,PatchTST;RANGE:XGBoost,LightGBM;HIGH_VOL:XGBoost;LOW_VOL:PatchTST"
)


class ConfigError(Exception):
    """Every problem found in one load, one line each: ``KEY=value: reason``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


#: Milliseconds the kernel adds to Redis's clock or hands to XAUTOCLAIM / Lua: at most 1e12 ms
#: (31 years), so now + value stays inside Redis's signed 64-bit integers and exact in Lua.
MAX_MS = 10**12
#: Decimal settings: at most this large and this many digits, so the gates' exact context
#: (200 digits, exponent limit 999) can never overflow or round on them.
MAX_DECIMAL = Decimal(10) ** 15
MAX_DECIMAL_DIGITS = 32
# The env file's numbers follow the intent contract's ASCII decimal rule: one rule, one place.
_ASCII_DECIMAL = re.compile(NUMBER_PATTERN)
_ASCII_INT = re.compile(r"[+-]?[0-9]{1,19}")


# Empty means "not set"; the texts themselves are the ones mode.py reads.
_BOOL_TEXTS = frozenset({""}) | TRUE_TEXTS | FALSE_TEXTS


def split_paths(value: str) -> list[str]:
    """APPLICATION_ENV_FILES: comma-separated absolute paths (ValueError names the bad one)."""
    paths = [part.strip() for part in value.split(",") if part.strip()]
    for path in paths:
        if not (path.isascii() and path.isprintable() and path.startswith("/")) or " " in path:
            raise ValueError(f"{path!r}: must be an absolute path without spaces")
    return paths


def _check_bool_text(value: str) -> str:
    # ASCII first: str.lower() maps some non-ASCII letters onto ASCII ones.
    if not value.isascii() or value.strip().lower() not in _BOOL_TEXTS:
        raise ValueError("must be true or false")
    return value


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` on loopback (``127.0.0.1:9478``, ``[::1]:9478``), or None for ''.

    Loopback only: the numbers describe the account's trading; a Prometheus elsewhere reaches
    them through the operator's own tunnel or proxy.
    """
    if value == "":
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ValueError("must be host:port (e.g. 127.0.0.1:9478) or empty")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port_text}: must be 1..65535")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(f"{host!r}: must be a loopback IP address (127.0.0.1 or [::1])") from None
    if not address.is_loopback:
        raise ValueError(f"{host}: not a loopback address (metrics are served on loopback only)")
    return bare, port


class KernelConfig(BaseSettings):
    """Validated kernel settings. Field aliases are the env keys."""

    model_config = SettingsConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, hide_input_in_errors=False
    )

    min_notional_usd: Decimal = Field(Decimal("25"), alias="MIN_NOTIONAL_USD", ge=0)
    edge_multiplier: Decimal = Field(Decimal("3.0"), alias="EDGE_MULTIPLIER", ge=1)
    min_hold_seconds: int = Field(300, alias="MIN_HOLD_SECONDS", ge=0, le=MAX_MS // 1000)
    max_trades_10min: int = Field(3, alias="MAX_TRADES_10MIN", ge=1, le=1_000_000)
    rate_window_seconds: int = Field(600, alias="RATE_WINDOW_SECONDS", ge=1, le=86400)
    min_r_trend: Decimal = Field(Decimal("2.5"), alias="MIN_R_TREND", ge=0)
    min_r_range: Decimal = Field(Decimal("1.8"), alias="MIN_R_RANGE", ge=0)
    min_r_other: Decimal | None = Field(None, alias="MIN_R_OTHER", ge=0)
    fee_bps_per_side: Decimal = Field(Decimal("5"), alias="FEE_BPS_PER_SIDE", ge=0, le=1000)
    funding_bps: Decimal = Field(Decimal("3"), alias="FUNDING_BPS", ge=0, le=1000)
    slippage_bps: Decimal = Field(Decimal("5"), alias="SLIPPAGE_BPS", ge=0, le=1000)
    noise_bps: Decimal = Field(Decimal("4"), alias="NOISE_BPS", ge=0, le=1000)
    allowed_models: str = Field(DEFAULT_ALLOWED_MODELS, alias="ALLOWED_MODELS")
    zombie_idle_ms: int = Field(3_600_000, alias="ZOMBIE_IDLE_MS", ge=1, le=MAX_MS)
    stale_idle_ms: int = Field(60_000, alias="STALE_IDLE_MS", ge=1, le=MAX_MS)
    max_intent_age_ms: int = Field(180_000, alias="MAX_INTENT_AGE_MS", ge=1, le=MAX_MS)
    max_deliveries: int = Field(5, alias="MAX_DELIVERIES", ge=1, le=1_000_000)
    recovery_batch: int = Field(100, alias="RECOVERY_BATCH", ge=1, le=1000)
    dead_letter_stream: str = Field(
        "quantum:stream:trade.intent.dlq", alias="DEAD_LETTER_STREAM", min_length=1
    )
    result_stream: str = Field("quantum:stream:trade.result", alias="RESULT_STREAM", min_length=1)
    execution_consumer: str = Field("", alias="EXECUTION_CONSUMER")
    # The kernel's own key: REDIS_URL is the application's, and a drop-in that wrote it would
    # move the application to the kernel's database. REDIS_URL is read only as a fallback.
    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="CORE_KERNEL_REDIS_URL")
    # Redis Sentinel (issue 15): with sentinels set, the master is resolved through them (and
    # again after a failover) and the URL is not used; the data credentials and db below then
    # stand for the URL's. Empty = a plain URL, as before.
    redis_sentinels: str = Field("", alias="CORE_KERNEL_REDIS_SENTINELS")
    redis_sentinel_master: str = Field("", alias="CORE_KERNEL_REDIS_SENTINEL_MASTER")
    redis_sentinel_username: str = Field("", alias="CORE_KERNEL_REDIS_SENTINEL_USERNAME")
    redis_sentinel_password: str = Field(
        "", alias="CORE_KERNEL_REDIS_SENTINEL_PASSWORD", repr=False
    )
    redis_username: str = Field("", alias="CORE_KERNEL_REDIS_USERNAME")
    redis_password: str = Field("", alias="CORE_KERNEL_REDIS_PASSWORD", repr=False)
    redis_db: int = Field(0, alias="CORE_KERNEL_REDIS_DB", ge=0, le=99999)
    stream_recover_log: str = Field(
        "/var/log/quantum/stream_recover.log", alias="STREAM_RECOVER_LOG", min_length=1
    )
    trading_mode: str = Field("", alias="TRADING_MODE")
    binance_testnet: str = Field("", alias="BINANCE_TESTNET")
    use_binance_testnet: str = Field("", alias="USE_BINANCE_TESTNET")
    binance_futures_url: str = Field("", alias="BINANCE_FUTURES_URL")
    binance_api_key: str = Field("", alias="BINANCE_API_KEY", repr=False)
    binance_api_secret: str = Field("", alias="BINANCE_API_SECRET", repr=False)

    # the application's environment and the kernel's secrets (issue 12) -------------------------
    # The mode keys above are the application's: the kernel's file does not carry them. Commands
    # run outside the services (gate-proof, recover, mode, evaluate on the host) read them from
    # the application's own env files named here (comma-separated absolute paths; only the mode
    # keys are taken, a missing or unreadable file is skipped as systemd's `-` prefix does).
    application_env_files: str = Field("", alias="APPLICATION_ENV_FILES")
    # Secrets (CORE_KERNEL_REDIS_PASSWORD, ...) live apart from the 0640 env file, in a
    # root-only file the drop-ins load through systemd; commands run as root read it from here.
    secrets_file: str = Field("", alias="CORE_KERNEL_SECRETS_FILE")

    # exactly-once (issue 10) ------------------------------------------------------------------
    # How long a signed request stays executable on the exchange (Binance allows <= 60000 and
    # recommends <= 5000); it bounds how long an ambiguous send must be waited out.
    binance_recv_window_ms: int = Field(5000, alias="BINANCE_RECV_WINDOW_MS", ge=100, le=60000)
    binance_position_mode: str = Field("auto", alias="BINANCE_POSITION_MODE")
    exchange_time_sync_s: int = Field(60, alias="EXCHANGE_TIME_SYNC_S", ge=1, le=3600)
    order_lease_margin_ms: int = Field(2000, alias="ORDER_LEASE_MARGIN_MS", ge=0, le=60000)
    order_lease_ms: int = Field(30000, alias="ORDER_LEASE_MS", ge=1000, le=86_400_000)
    redis_durability: str = Field("warn", alias="REDIS_DURABILITY")

    # operator controls (issue 14) ---------------------------------------------------------------
    # Fat-finger limits per order (empty = off). Defaults catch a 10x-1000x slip of a bot whose
    # orders are tens to a few thousand USD: 50000 USD is 2000x MIN_NOTIONAL_USD; leverage above
    # 20 is outside what an automated strategy here is meant to use (Binance allows up to 125).
    max_notional_usd: Decimal | None = Field(Decimal("50000"), alias="MAX_NOTIONAL_USD", gt=0)
    max_leverage: Decimal | None = Field(Decimal("20"), alias="MAX_LEVERAGE", ge=1, le=125)
    # Automatic protections (issue 14, ``core-kernel protect``; README "Protections"). A USD
    # loss limit only means something against the account's size: off until the operator sets
    # one. A drawdown of 10 % from the peak fits any size and cannot trip on the lab's fake
    # exchange, whose equity stays where a test puts it.
    daily_loss_limit_usd: Decimal | None = Field(None, alias="DAILY_LOSS_LIMIT_USD", gt=0)
    max_drawdown_pct: Decimal | None = Field(Decimal("10"), alias="MAX_DRAWDOWN_PCT", gt=0, lt=100)
    protection_trip_state: str = Field("REDUCING", alias="PROTECTION_TRIP_STATE")
    protection_stale_seconds: int = Field(300, alias="PROTECTION_STALE_SECONDS", ge=10, le=86400)
    protection_live: str = Field("", alias="PROTECTION_LIVE")
    # Limits on exchange data (mark price, positions): off by default, because every door
    # without an exchange (the profit_gate API existing services call, evaluate, gate-proof's
    # host) would then HOLD every entry for want of data. Turn them on where the reference
    # worker sends the orders (it fetches the data). At most 1e9 USD: admit.lua sums them in
    # micro-USD integers, exact in Lua's doubles (gates.to_micro).
    price_collar_pct: Decimal | None = Field(None, alias="PRICE_COLLAR_PCT", gt=0, le=100)
    max_position_usd: Decimal | None = Field(None, alias="MAX_POSITION_USD", gt=0, le=10**9)
    max_gross_exposure_usd: Decimal | None = Field(
        None, alias="MAX_GROSS_EXPOSURE_USD", gt=0, le=10**9
    )
    # Market data older than this is not used (the limit holds instead). Binance updates the
    # mark price every second; 3 s allows one missed update plus a round trip.
    market_data_max_age_ms: int = Field(3000, alias="MARKET_DATA_MAX_AGE_MS", ge=100, le=60000)

    # metrics (issue 13) -------------------------------------------------------------------------
    # Where the reference worker and router serve /metrics: loopback host:port, empty = off.
    worker_metrics_listen: str = Field("", alias="WORKER_METRICS_LISTEN")
    router_metrics_listen: str = Field("", alias="ROUTER_METRICS_LISTEN")

    @field_validator("worker_metrics_listen", "router_metrics_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("application_env_files")
    @classmethod
    def _check_app_env_files(cls, value: str) -> str:
        split_paths(value)
        return value

    @field_validator("secrets_file")
    @classmethod
    def _check_secrets_file(cls, value: str) -> str:
        if value and not (value.isascii() and value.startswith("/") and value.isprintable()):
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _password_once(self) -> KernelConfig:
        parsed = urlparse(self.redis_url)
        in_url = parsed.password is not None or "password=" in parsed.query.lower()
        if self.redis_password and not self.redis_sentinels and in_url:
            raise ValueError(
                "CORE_KERNEL_REDIS_PASSWORD is set and the Redis URL carries a password too: "
                "give it in one place"
            )
        return self

    @field_validator("binance_position_mode")
    @classmethod
    def _check_position_mode(cls, value: str) -> str:
        if value not in {"auto", "oneway", "hedge"}:
            raise ValueError("must be auto, oneway or hedge")
        return value

    @field_validator("protection_trip_state")
    @classmethod
    def _check_trip_state(cls, value: str) -> str:
        if value not in {"REDUCING", "HALTED"}:
            raise ValueError("must be REDUCING or HALTED")
        return value

    @field_validator("redis_durability")
    @classmethod
    def _check_durability(cls, value: str) -> str:
        if value not in {"warn", "refuse"}:
            raise ValueError("must be warn or refuse")
        return value

    @field_validator("order_lease_ms")
    @classmethod
    def _check_lease(cls, value: int, info: ValidationInfo) -> int:
        # After the last send the lease must outlive its recvWindow plus the margin (or a second
        # worker could take over while our request can still execute); what is left is the
        # budget for the sends themselves, kept at least as large.
        window = info.data.get("binance_recv_window_ms")
        margin = info.data.get("order_lease_margin_ms")
        if window is not None and margin is not None and value <= 2 * (window + margin):
            raise ValueError(
                f"must be more than 2 x (BINANCE_RECV_WINDOW_MS + ORDER_LEASE_MARGIN_MS) "
                f"= {2 * (window + margin)}"
            )
        return value

    # end of exactly-once (issue 10) -----------------------------------------------------------

    _EMPTY_IS_NONE: ClassVar[frozenset[str]] = frozenset({"MIN_R_OTHER"})
    #: Which key ``redis_url`` came from, for messages (load_config sets it).
    _redis_url_key: str = PrivateAttr(KERNEL_REDIS_URL_KEY)

    @property
    def redis_url_key(self) -> str:
        return self._redis_url_key

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Layering (file, then environment, known keys only) is done by load_config so that
        # unknown keys and per-key errors can be reported; the model only validates.
        return (init_settings,)

    @field_validator(
        "min_r_other",
        "max_notional_usd",
        "max_leverage",
        "daily_loss_limit_usd",
        "max_drawdown_pct",
        "price_collar_pct",
        "max_position_usd",
        "max_gross_exposure_usd",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator(
        "min_notional_usd",
        "edge_multiplier",
        "min_r_trend",
        "min_r_range",
        "min_r_other",
        "fee_bps_per_side",
        "funding_bps",
        "slippage_bps",
        "noise_bps",
        "max_notional_usd",
        "max_leverage",
        "daily_loss_limit_usd",
        "max_drawdown_pct",
        "price_collar_pct",
        "max_position_usd",
        "max_gross_exposure_usd",
        mode="before",
    )
    @classmethod
    def _ascii_decimal(cls, value: Any) -> Any:
        # Python's Decimal() reads Arabic-Indic and fullwidth digits; the env contract is ASCII.
        if isinstance(value, str) and value.strip():
            if _ASCII_DECIMAL.fullmatch(value) is None:
                raise ValueError("must be an ASCII decimal number (exponent of <= 4 digits)")
            dec = Decimal(value)
            if len(dec.as_tuple().digits) > MAX_DECIMAL_DIGITS or abs(dec) > MAX_DECIMAL:
                raise ValueError(f"out of range (at most {MAX_DECIMAL_DIGITS} digits and 1e15)")
        return value

    @field_validator(
        "min_hold_seconds",
        "max_trades_10min",
        "rate_window_seconds",
        "zombie_idle_ms",
        "stale_idle_ms",
        "max_intent_age_ms",
        "max_deliveries",
        "recovery_batch",
        "protection_stale_seconds",
        "market_data_max_age_ms",
        "redis_db",
        mode="before",
    )
    @classmethod
    def _ascii_int(cls, value: Any) -> Any:
        if isinstance(value, str) and _ASCII_INT.fullmatch(value) is None:
            raise ValueError("must be an ASCII integer")
        return value

    @model_validator(mode="after")
    def _consumers_can_run(self) -> KernelConfig:
        # A takeover happens after STALE_IDLE_MS idle and a send may execute up to recvWindow
        # later; an age limit below that would expire every intent a crashed worker leaves.
        window = self.binance_recv_window_ms
        floor = self.stale_idle_ms + window
        if self.max_intent_age_ms <= floor:
            raise ValueError(
                f"MAX_INTENT_AGE_MS={self.max_intent_age_ms}: must be > STALE_IDLE_MS + "
                f"recvWindow ({window} ms) = {floor}, or every takeover expires"
            )
        return self

    @field_validator("allowed_models")
    @classmethod
    def _check_models(cls, value: str) -> str:
        parse_allowed_models(value)
        return value

    @field_validator("trading_mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        # ASCII first: "l\u0131ve".upper() is "LIVE" (dotless i), and the mode is no place to guess.
        if not value.isascii() or value.strip().upper() not in {"", "TESTNET", "LIVE"}:
            raise ValueError("must be TESTNET or LIVE")
        return value

    @field_validator("binance_testnet", "use_binance_testnet", "protection_live")
    @classmethod
    def _check_bool(cls, value: str) -> str:
        return _check_bool_text(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str) -> str:
        parse_sentinels(value)
        return value

    @field_validator(
        "redis_sentinel_master",
        "redis_sentinel_username",
        "redis_sentinel_password",
        "redis_username",
        "redis_password",
    )
    @classmethod
    def _check_redis_word(cls, value: str) -> str:
        # Sent in AUTH / SENTINEL commands as one argument: no whitespace or control characters.
        if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must be printable ASCII without whitespace")
        if len(value) > 512:
            raise ValueError("longer than 512 characters")
        return value

    @model_validator(mode="after")
    def _sentinel_or_url(self) -> KernelConfig:
        # One source for the master: a URL next to the sentinels, or sentinel-only keys without
        # them, would be silently ignored - refuse both so the operator sees which one counts.
        # The master's username/password serve a plain URL too (kept out of the URL, in the
        # secrets file), unless the URL carries credentials of its own (_password_once).
        data_keys = {
            "redis_db": "CORE_KERNEL_REDIS_DB",
            "redis_sentinel_master": "CORE_KERNEL_REDIS_SENTINEL_MASTER",
            "redis_sentinel_username": "CORE_KERNEL_REDIS_SENTINEL_USERNAME",
            "redis_sentinel_password": "CORE_KERNEL_REDIS_SENTINEL_PASSWORD",
        }
        for user, password in (
            ("CORE_KERNEL_REDIS_USERNAME", "CORE_KERNEL_REDIS_PASSWORD"),
            ("CORE_KERNEL_REDIS_SENTINEL_USERNAME", "CORE_KERNEL_REDIS_SENTINEL_PASSWORD"),
        ):
            if getattr(self, _field_of(user)) and not getattr(self, _field_of(password)):
                raise ValueError(f"{user}: set without {password} (AUTH needs the password)")
        if self.redis_sentinels:
            if not self.redis_sentinel_master:
                raise ValueError(
                    f"CORE_KERNEL_REDIS_SENTINEL_MASTER: required when {SENTINELS_KEY} is set "
                    "(the name in the sentinels' 'sentinel monitor' line)"
                )
            if "redis_url" in self.model_fields_set:
                raise ValueError(
                    f"{KERNEL_REDIS_URL_KEY}: set together with {SENTINELS_KEY}; the sentinels "
                    "name the master - remove one of them"
                )
        else:
            stray = [key for name, key in data_keys.items() if name in self.model_fields_set]
            stray = [k for k in stray if getattr(self, _field_of(k)) not in ("", 0)]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)}: only used with {SENTINELS_KEY} (a plain "
                    f"{KERNEL_REDIS_URL_KEY} carries its own db)"
                )
        return self

    @field_validator("binance_futures_url")
    @classmethod
    def _check_futures_url(cls, value: str) -> str:
        if value and urlparse(value).scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("execution_consumer")
    @classmethod
    def _check_consumer(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        return value

    # Derived values -------------------------------------------------------------------------
    @property
    def friction_bps(self) -> Decimal:
        """Round-trip friction: the fee is paid on entry and on exit."""
        return 2 * self.fee_bps_per_side + self.funding_bps + self.slippage_bps + self.noise_bps

    @property
    def consumer_name(self) -> str:
        """Stable consumer name: recovery claims into it and the worker reads as it."""
        return self.execution_consumer or f"{socket.gethostname()}:quantum-execution"

    @property
    def protection_live_enabled(self) -> bool:
        """PROTECTION_LIVE: the automatic protections change the state in LIVE too."""
        return self.protection_live.strip().lower() in TRUE_TEXTS

    def mode_env(self) -> dict[str, str]:
        return {
            "TRADING_MODE": self.trading_mode,
            "BINANCE_TESTNET": self.binance_testnet,
            "USE_BINANCE_TESTNET": self.use_binance_testnet,
        }

    def gate_params(self) -> GateParams:
        return GateParams(
            min_notional_usd=self.min_notional_usd,
            edge_multiplier=self.edge_multiplier,
            friction_rate=self.friction_bps / Decimal(10000),
            min_hold_seconds=self.min_hold_seconds,
            max_trades=self.max_trades_10min,
            rate_window_seconds=self.rate_window_seconds,
            min_r_trend=self.min_r_trend,
            min_r_range=self.min_r_range,
            min_r_other=self.min_r_other,
            allowed_models=parse_allowed_models(self.allowed_models),
            max_intent_age_ms=self.max_intent_age_ms,
            max_notional_usd=self.max_notional_usd,
            max_leverage=self.max_leverage,
            price_collar_pct=self.price_collar_pct,
            max_position_usd=self.max_position_usd,
            max_gross_exposure_usd=self.max_gross_exposure_usd,
        )


#: At most this many sentinels: a list is tried in order on every master lookup.
MAX_SENTINELS = 16


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[::1]:26379`` for IPv6) as (host, port) pairs; () for ''."""
    if value == "":
        return ()
    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must be printable ASCII without whitespace: host:port,host:port")
    out: list[tuple[str, int]] = []
    for item in value.split(","):
        host, sep, port_text = item.rpartition(":")
        if not sep or not host or not port_text.isdigit() or len(port_text) > 5:
            raise ValueError(f"{item!r}: must be host:port (e.g. 10.0.0.5:26379)")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"{item!r}: port must be 1..65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{item!r}: not an IPv6 address in brackets") from None
        elif not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", host):
            raise ValueError(f"{item!r}: host must be a name or an IP address")
        if (host, port) in out:
            raise ValueError(f"{item!r}: listed twice")
        out.append((host, port))
    if len(out) > MAX_SENTINELS:
        raise ValueError(f"more than {MAX_SENTINELS} sentinels")
    return tuple(out)


def check_redis_url(value: str) -> str:
    """The whole URL as redis-py will read it (scheme, port, db), or ValueError with the reason."""
    import redis.connection  # noqa: PLC0415 - only for the parse, keeps config import light

    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must be printable ASCII without whitespace")
    parsed = urlparse(value)
    if parsed.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    try:
        port = parsed.port  # urllib raises for a non-numeric or out-of-range port
        redis.connection.parse_url(value)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"not a usable Redis URL ({exc})") from None
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ValueError("names no host")
    # redis-py silently ignores a database path that is not a number: refuse it here.
    db = parsed.path[1:] if parsed.scheme != "unix" else ""
    if db and not (db.isascii() and db.isdigit() and len(db) <= 5):
        raise ValueError(f"database {db!r} is not a small integer")
    if port == 0:
        raise ValueError("port 0 is not a port")
    return value


#: keys whose value is a secret as a whole: never echoed, in an error or a dump
SECRET_KEYS: frozenset[str] = frozenset(
    {
        "BINANCE_API_KEY",
        "BINANCE_API_SECRET",
        "CORE_KERNEL_REDIS_PASSWORD",
        "CORE_KERNEL_REDIS_SENTINEL_PASSWORD",
    }
)
#: keys whose value is a URL that may carry a password
URL_KEYS: frozenset[str] = frozenset({KERNEL_REDIS_URL_KEY, APP_REDIS_URL_KEY})


def redact_url(url: str) -> str:
    """The URL with its password (userinfo or ``?password=``) replaced by ``***``."""
    try:
        parsed = urlparse(url)
        password = parsed.password
        query = parse_qsl(parsed.query, keep_blank_values=True)
    except ValueError:
        return "<unparsable URL>" if "@" in url or "password" in url.lower() else url
    if password is not None:
        user = parsed.username or ""
        host = parsed.netloc.rpartition("@")[2]
        parsed = parsed._replace(netloc=f"{user}:***@{host}")
    if any(k.lower() == "password" for k, _ in query):
        masked = [(k, "***" if k.lower() == "password" else v) for k, v in query]
        parsed = parsed._replace(query=urlencode(masked, safe="*"))
    text = parsed.geturl()
    # urlunparse drops the empty authority of unix:///path; put it back for a faithful display
    if url.startswith("unix://") and not text.startswith("unix://"):
        text = "unix://" + text.removeprefix("unix:")
    return text


def shown(key: str, value: object) -> object:
    """A config value as it may appear in an error, a log line or a dump."""
    if key in SECRET_KEYS:
        return "***" if value else value
    if key in URL_KEYS and isinstance(value, str):
        return redact_url(value)
    return value


def _alias(name: str, field: Any) -> str:
    return str(field.alias or name)


def _field_of(key: str) -> str:
    """The model field behind an env key."""
    for name, fld in KernelConfig.model_fields.items():
        if fld.alias == key:
            return name
    raise KeyError(key)


KNOWN_KEYS: frozenset[str] = frozenset(
    _alias(name, field) for name, field in KernelConfig.model_fields.items()
) | {APP_REDIS_URL_KEY}


def _unquote(raw: str) -> str:
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in {'"', "'"}:
        return value[1:-1]
    return value


def parse_env_file(text: str, source: str = "env file") -> tuple[dict[str, str], list[str]]:
    """Parse ``KEY=VALUE`` lines as systemd's EnvironmentFile does (no inline comments)."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if "=" not in stripped:
            errors.append(f"{source}:{lineno}: {stripped!r}: not a KEY=VALUE line")
            continue
        key, _, raw = stripped.partition("=")
        key = key.strip()
        value = _unquote(raw)
        if key not in KNOWN_KEYS:
            errors.append(f"{key}={value}: unknown key in {source} (line {lineno})")
            continue
        values[key] = value
    return values, errors


def _reason(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    ctx = err.get("ctx") or {}
    if err.get("type") == "value_error" and "error" in ctx:
        msg = str(ctx["error"])
    return msg.removeprefix("Value error, ")


def resolve_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read, or None when the default file is absent (defaults + environment)."""
    if path is not None:
        return Path(path)
    if environ.get(PATH_ENV_VAR):
        return Path(environ[PATH_ENV_VAR])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


MAX_CONFIG_BYTES = 1 << 20
APP_ENV_FILES_KEY = "APPLICATION_ENV_FILES"
SECRETS_FILE_KEY = "CORE_KERNEL_SECRETS_FILE"
#: What the secrets file may hold: the kernel's own secrets, nothing else.
SECRETS_FILE_KEYS = frozenset(
    {
        "CORE_KERNEL_REDIS_PASSWORD",
        "CORE_KERNEL_REDIS_SENTINEL_PASSWORD",
        "BINANCE_API_KEY",
        "BINANCE_API_SECRET",
    }
)
_MODE_LINE = re.compile(
    r"^\s*(?:export\s+)?(TRADING_MODE|BINANCE_TESTNET|USE_BINANCE_TESTNET)\s*=(.*)$"
)


def _application_mode(paths_text: str) -> dict[str, str]:
    """The mode keys of the application's env files, later files winning (systemd's order).

    Only the three mode keys are read: the files also hold the application's own secrets,
    which the kernel has no business holding. A file that is missing or unreadable (a command
    run by an unprivileged user) is skipped: the mode is then what the environment says, or
    UNKNOWN - which enforces every gate and lets recovery only report.
    """
    try:
        paths = split_paths(paths_text)
    except ValueError:
        return {}  # the field validator reports it
    found: dict[str, str] = {}
    for path in paths:
        try:
            text = _read_regular(Path(path))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        for line in text.splitlines():
            match = _MODE_LINE.match(line)
            if match:
                found[match.group(1)] = _unquote(match.group(2))
    return found


def _read_secrets(path: str, errors: list[str]) -> dict[str, str]:
    """The secrets file: root-only (no group or other bits), the kernel's secrets only.

    Unreadable (a command run by an unprivileged user; the services get the file through
    systemd) yields nothing: Redis then refuses the connection as "auth failed", by name.
    """
    label = f"{SECRETS_FILE_KEY}={path}"
    try:
        info = os.stat(path)
        if info.st_mode & 0o077:
            errors.append(
                f"{label}: readable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); must be 0600"
            )
            return {}
        text = _read_regular(Path(path))
    except PermissionError:
        return {}
    except FileNotFoundError:
        errors.append(f"{label}: secrets file does not exist")
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        errors.append(f"{label}: cannot read secrets file: {exc}")
        return {}
    values, file_errors = parse_env_file(text, source=path)
    # Never echo a line of this file: an error names the line number and the key only.
    errors.extend(
        f"{label}: line {line.rsplit('line ', 1)[-1].rstrip(')')}: not a secret the kernel reads"
        if "unknown key" in line
        else f"{label}: a line is not KEY=VALUE"
        for line in file_errors
    )
    stray = sorted(set(values) - SECRETS_FILE_KEYS)
    if stray:
        errors.append(f"{label}: holds {', '.join(stray)}, which belong in the env file")
    return {key: value for key, value in values.items() if key in SECRETS_FILE_KEYS}


def _read_regular(path: Path) -> str:
    """The file's text; only a regular file is read (a FIFO would block, a device never end)."""
    # O_NONBLOCK: opening a FIFO with no writer must not hang before fstat can refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            data = fh.read(MAX_CONFIG_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    return data.decode("utf-8")


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> KernelConfig:
    """Load and validate; raise ConfigError listing every problem at once.

    An explicitly named file (``path`` or ``$CORE_GATES_ENV``) must exist; a missing default
    file means built-in defaults plus the environment, so a service started before the first
    deploy still works - with the gates on.
    """
    env = os.environ if environ is None else environ
    errors: list[str] = []
    values: dict[str, str] = {}
    explicit = path is not None or bool(env.get(PATH_ENV_VAR))
    label = "--config" if path is not None else PATH_ENV_VAR
    file_path = resolve_path(path, env)
    if file_path is not None:
        try:
            text = _read_regular(file_path)
        except FileNotFoundError:
            if explicit:
                errors.append(f"{label}={file_path}: config file does not exist")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            errors.append(f"{label}={file_path}: cannot read config file: {exc}")
        else:
            file_values, file_errors = parse_env_file(text, source=str(file_path))
            values.update(file_values)
            errors.extend(file_errors)
    secrets_path = env.get(SECRETS_FILE_KEY) or values.get(SECRETS_FILE_KEY, "")
    if secrets_path and not any(key in env for key in SECRETS_FILE_KEYS):
        values.update(_read_secrets(secrets_path, errors))
    app_files = env.get(APP_ENV_FILES_KEY, values.get(APP_ENV_FILES_KEY, ""))
    # systemd's order: the application's files first, the kernel's file, then the environment.
    values = {**_application_mode(app_files), **values}
    values.update({key: env[key] for key in KNOWN_KEYS if key in env})
    # The application's REDIS_URL counts only when the kernel's own key is not set anywhere.
    app_url = values.pop(APP_REDIS_URL_KEY, None)
    url_key = KERNEL_REDIS_URL_KEY
    # With sentinels the application's URL is not a fallback: the sentinels name the master.
    if KERNEL_REDIS_URL_KEY not in values and app_url is not None and not values.get(SENTINELS_KEY):
        values[KERNEL_REDIS_URL_KEY] = app_url
        url_key = APP_REDIS_URL_KEY
    try:
        config = KernelConfig(**values)  # type: ignore[arg-type]  # text, validated here
    except ValidationError as exc:
        for err in exc.errors():
            if not err["loc"]:  # a relation between keys: the message names them
                errors.append(_reason(err))
                continue
            key = str(err["loc"][0])
            bad = values.get(key, err.get("input"))
            if key == KERNEL_REDIS_URL_KEY:
                key = url_key
            bad = shown(key, bad)
            reason = _reason(err)
            if isinstance(bad, str) and "#" in bad:
                reason += " (inline comments are not allowed: systemd keeps them in the value)"
            errors.append(f"{key}={bad}: {reason}")
    else:
        if not errors:
            config._redis_url_key = url_key
            return config
    raise ConfigError(errors)


def load_service_config(path: str | os.PathLike[str] | None, err: TextIO) -> KernelConfig | None:
    """For a service's start-up: the config, or None after writing every error to ``err``.

    A service that gets None must exit non-zero rather than trade on defaults.
    """
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=err)
        return None
