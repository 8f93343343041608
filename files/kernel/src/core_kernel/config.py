"""The env contract: ``/etc/quantum/core_gates.env`` then the process environment on top.

Rules (see README): the file is parsed the way systemd's ``EnvironmentFile=`` reads it, because
the services load the same file through their drop-ins - so ``check-config`` judges exactly the
values a service will see. A key the kernel does not know, in the file, is an error (a typo must
never fall back to a default). From the process environment only known keys are taken.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TextIO
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core_kernel.gates import GateParams, parse_allowed_models

DEFAULT_PATH = Path("/etc/quantum/core_gates.env")
PATH_ENV_VAR = "CORE_GATES_ENV"

DEFAULT_ALLOWED_MODELS = (
    "TREND:NHiTS,PatchTST;RANGE:XGBoost,LightGBM;HIGH_VOL:XGBoost;LOW_VOL:PatchTST"
)


class ConfigError(Exception):
    """Every problem found in one load, one line each: ``KEY=value: reason``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _check_bool_text(value: str) -> str:
    if value.strip().lower() not in {"", "true", "false", "1", "0", "yes", "no", "on", "off"}:
        raise ValueError("must be true or false")
    return value


class KernelConfig(BaseSettings):
    """Validated kernel settings. Field aliases are the env keys."""

    model_config = SettingsConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, hide_input_in_errors=False
    )

    min_notional_usd: Decimal = Field(Decimal("25"), alias="MIN_NOTIONAL_USD", ge=0)
    edge_multiplier: Decimal = Field(Decimal("3.0"), alias="EDGE_MULTIPLIER", ge=1)
    min_hold_seconds: int = Field(300, alias="MIN_HOLD_SECONDS", ge=0)
    max_trades_10min: int = Field(3, alias="MAX_TRADES_10MIN", ge=1)
    rate_window_seconds: int = Field(600, alias="RATE_WINDOW_SECONDS", ge=1, le=86400)
    min_r_trend: Decimal = Field(Decimal("2.5"), alias="MIN_R_TREND", ge=0)
    min_r_range: Decimal = Field(Decimal("1.8"), alias="MIN_R_RANGE", ge=0)
    min_r_other: Decimal | None = Field(None, alias="MIN_R_OTHER", ge=0)
    fee_bps_per_side: Decimal = Field(Decimal("5"), alias="FEE_BPS_PER_SIDE", ge=0, le=1000)
    funding_bps: Decimal = Field(Decimal("3"), alias="FUNDING_BPS", ge=0, le=1000)
    slippage_bps: Decimal = Field(Decimal("5"), alias="SLIPPAGE_BPS", ge=0, le=1000)
    noise_bps: Decimal = Field(Decimal("4"), alias="NOISE_BPS", ge=0, le=1000)
    allowed_models: str = Field(DEFAULT_ALLOWED_MODELS, alias="ALLOWED_MODELS")
    zombie_idle_ms: int = Field(3_600_000, alias="ZOMBIE_IDLE_MS", ge=1)
    stale_idle_ms: int = Field(60_000, alias="STALE_IDLE_MS", ge=1)
    max_deliveries: int = Field(5, alias="MAX_DELIVERIES", ge=1)
    recovery_batch: int = Field(100, alias="RECOVERY_BATCH", ge=1, le=1000)
    dead_letter_stream: str = Field(
        "quantum:stream:trade.intent.dlq", alias="DEAD_LETTER_STREAM", min_length=1
    )
    result_stream: str = Field("quantum:stream:trade.result", alias="RESULT_STREAM", min_length=1)
    execution_consumer: str = Field("", alias="EXECUTION_CONSUMER")
    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="REDIS_URL")
    stream_recover_log: str = Field(
        "/var/log/quantum/stream_recover.log", alias="STREAM_RECOVER_LOG", min_length=1
    )
    trading_mode: str = Field("", alias="TRADING_MODE")
    binance_testnet: str = Field("", alias="BINANCE_TESTNET")
    use_binance_testnet: str = Field("", alias="USE_BINANCE_TESTNET")
    binance_futures_url: str = Field("", alias="BINANCE_FUTURES_URL")
    binance_api_key: str = Field("", alias="BINANCE_API_KEY", repr=False)
    binance_api_secret: str = Field("", alias="BINANCE_API_SECRET", repr=False)

    _EMPTY_IS_NONE: ClassVar[frozenset[str]] = frozenset({"MIN_R_OTHER"})

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

    @field_validator("min_r_other", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("allowed_models")
    @classmethod
    def _check_models(cls, value: str) -> str:
        parse_allowed_models(value)
        return value

    @field_validator("trading_mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        if value.strip().upper() not in {"", "TESTNET", "LIVE"}:
            raise ValueError("must be TESTNET or LIVE")
        return value

    @field_validator("binance_testnet", "use_binance_testnet")
    @classmethod
    def _check_bool(cls, value: str) -> str:
        return _check_bool_text(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

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
        )


def _alias(name: str, field: Any) -> str:
    return str(field.alias or name)


KNOWN_KEYS: frozenset[str] = frozenset(
    _alias(name, field) for name, field in KernelConfig.model_fields.items()
)


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
            text = file_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit:
                errors.append(f"{label}={file_path}: config file does not exist")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{label}={file_path}: cannot read config file: {exc}")
        else:
            file_values, file_errors = parse_env_file(text, source=str(file_path))
            values.update(file_values)
            errors.extend(file_errors)
    values.update({key: env[key] for key in KNOWN_KEYS if key in env})
    try:
        config = KernelConfig(**values)  # type: ignore[arg-type]  # text, validated here
    except ValidationError as exc:
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            bad = values.get(key, err.get("input"))
            reason = _reason(err)
            if isinstance(bad, str) and "#" in bad:
                reason += " (inline comments are not allowed: systemd keeps them in the value)"
            errors.append(f"{key}={bad}: {reason}")
    else:
        if not errors:
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
