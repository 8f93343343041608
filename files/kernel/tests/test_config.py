from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from core_kernel import config as config_mod
from core_kernel.config import KNOWN_KEYS, ConfigError, load_config, parse_env_file

SEED_FILE = """\
# CORE TRADING KERNEL - ECONOMIC GATES
MIN_NOTIONAL_USD=25
EDGE_MULTIPLIER=3.0
MIN_HOLD_SECONDS=300
MAX_TRADES_10MIN=3
MIN_R_TREND=2.5
MIN_R_RANGE=1.8
ZOMBIE_IDLE_MS=3600000
STALE_IDLE_MS=60000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "core_gates.env"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_original_contract() -> None:
    cfg = load_config(environ={})
    assert cfg.min_notional_usd == Decimal(25)
    assert cfg.edge_multiplier == Decimal("3.0")
    assert cfg.min_hold_seconds == 300
    assert cfg.max_trades_10min == 3
    assert cfg.min_r_trend == Decimal("2.5")
    assert cfg.min_r_range == Decimal("1.8")
    assert cfg.zombie_idle_ms == 3_600_000
    assert cfg.stale_idle_ms == 60_000
    assert cfg.min_r_other is None
    # friction: 2 x 5 + 3 + 5 + 4 = 22 bps = 0.22 % of notional
    assert cfg.friction_bps == Decimal(22)
    assert cfg.gate_params().friction_rate == Decimal("0.0022")


def test_seed_env_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SEED_FILE), environ={})
    assert cfg.max_trades_10min == 3


def test_environment_overrides_file_for_known_keys_only(tmp_path: Path) -> None:
    path = write(tmp_path, "MAX_TRADES_10MIN=3\nMIN_R_TREND=2.5\n")
    cfg = load_config(path, environ={"MAX_TRADES_10MIN": "7", "PATH": "/bin", "FOO": "x"})
    assert cfg.max_trades_10min == 7
    assert cfg.min_r_trend == Decimal("2.5")


def test_every_error_is_reported_at_once_with_key_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "MIN_NOTIONAL_USD=abc\nEDGE_MULTIPLIER=0.5\nMAX_TRADE_10MIN=3\n"
        "MIN_R_TREND=-1\nSTALE_IDLE_MS=nan\nTRADING_MODE=PAPER\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    errors = info.value.errors
    assert len(errors) == 6, errors
    text = "\n".join(errors)
    for fragment in (
        "MIN_NOTIONAL_USD=abc",
        "EDGE_MULTIPLIER=0.5",
        "MAX_TRADE_10MIN=3: unknown key",
        "MIN_R_TREND=-1",
        "STALE_IDLE_MS=nan",
        "TRADING_MODE=PAPER",
    ):
        assert fragment in text


def test_inline_comment_is_an_error_like_systemd_would_see_it(tmp_path: Path) -> None:
    path = write(tmp_path, "MIN_NOTIONAL_USD=25          # Minimum $25 per trade\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "inline comments" in info.value.errors[0]
    assert info.value.errors[0].startswith("MIN_NOTIONAL_USD=25")


def test_bad_environment_value_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"MIN_HOLD_SECONDS": "five"})
    assert info.value.errors[0].startswith("MIN_HOLD_SECONDS=five:")


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.env", environ={})
    assert "does not exist" in info.value.errors[0]
    with pytest.raises(ConfigError):
        load_config(environ={"CORE_GATES_ENV": str(tmp_path / "nope.env")})


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", tmp_path / "absent.env")
    cfg = load_config(environ={"MAX_TRADES_10MIN": "4"})
    assert cfg.max_trades_10min == 4


def test_core_gates_env_variable_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "MIN_HOLD_SECONDS=60\n")
    assert load_config(environ={"CORE_GATES_ENV": str(path)}).min_hold_seconds == 60


def test_quotes_and_comments_parse_like_systemd() -> None:
    values, errors = parse_env_file('# c\n; c\n\nREDIS_URL="redis://h:1/2"\nMIN_R_OTHER=\n')
    assert errors == []
    assert values == {"REDIS_URL": "redis://h:1/2", "MIN_R_OTHER": ""}
    assert load_config(environ=values).min_r_other is None


def test_kernel_redis_url_wins_over_the_applications(tmp_path: Path) -> None:
    # In the application's process: its own REDIS_URL in the environment, the kernel's key from
    # the drop-in's env file. The kernel uses its own and leaves REDIS_URL to the application.
    path = write(tmp_path, "CORE_KERNEL_REDIS_URL=redis://127.0.0.1:6379/0\n")
    config = load_config(path, environ={"REDIS_URL": "redis://10.0.0.9:6380/3"})
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.redis_url_key == "CORE_KERNEL_REDIS_URL"
    # ... even when the application's value is one the kernel would refuse: it is not used.
    config = load_config(path, environ={"REDIS_URL": "not-a-url"})
    assert config.redis_url == "redis://127.0.0.1:6379/0"


def test_applications_redis_url_is_the_fallback(tmp_path: Path) -> None:
    config = load_config(environ={"REDIS_URL": "redis://10.0.0.9:6380/3"})
    assert config.redis_url == "redis://10.0.0.9:6380/3"
    assert config.redis_url_key == "REDIS_URL"
    assert load_config(environ={}).redis_url == "redis://127.0.0.1:6379/0"
    assert load_config(environ={}).redis_url_key == "CORE_KERNEL_REDIS_URL"
    # The kernel's key from the environment beats the application's from the file.
    path = write(tmp_path, "REDIS_URL=redis://h:1/2\n")
    env = {"CORE_KERNEL_REDIS_URL": "redis://k:2/3"}
    assert load_config(path, environ=env).redis_url == "redis://k:2/3"


@pytest.mark.parametrize("key", ["CORE_KERNEL_REDIS_URL", "REDIS_URL"])
def test_a_bad_redis_url_is_named_by_the_key_it_came_from(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={key: "redis://127.0.0.1:notaport/0"})
    (line,) = info.value.errors
    assert line.startswith(f"{key}=redis://127.0.0.1:notaport/0: not a usable Redis URL"), line


def test_not_a_key_value_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "just words\n"), environ={})
    assert "not a KEY=VALUE line" in info.value.errors[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ALLOWED_MODELS", "TREND"),
        ("ALLOWED_MODELS", "TREND:a;TREND:b"),
        ("REDIS_URL", "http://x"),
        ("RECOVERY_BATCH", "0"),
        ("RECOVERY_BATCH", "5000"),
        ("MAX_DELIVERIES", "0"),
        ("BINANCE_TESTNET", "maybe"),
        ("FEE_BPS_PER_SIDE", "-1"),
        ("EXECUTION_CONSUMER", "a b"),
        ("MAX_TRADES_10MIN", "0"),
        ("BINANCE_FUTURES_URL", "ftp://x"),
    ],
)
def test_out_of_range_values(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={key: value})
    assert info.value.errors[0].startswith(f"{key}={value}:")


def test_allowed_models_table_and_consumer_default() -> None:
    cfg = load_config(environ={"ALLOWED_MODELS": "TREND:A,B;chop:C", "EXECUTION_CONSUMER": ""})
    params = cfg.gate_params()
    assert params.allowed_models == {"TREND": ("A", "B"), "CHOP": ("C",)}
    assert cfg.consumer_name.endswith(":quantum-execution")
    assert load_config(environ={"EXECUTION_CONSUMER": "h1:exec"}).consumer_name == "h1:exec"


def test_known_keys_cover_the_documented_table() -> None:
    doc = Path(__file__).resolve().parents[3] / "docs" / "ARCHITECTURE.md"
    text = doc.read_text(encoding="utf-8")
    section = text.split("### Env file", 1)[1].split("\n#", 1)[0]
    table_keys = set()
    for line in section.splitlines():
        if line.startswith("| `") and "` |" in line:
            for key in line.split("|")[1].replace("`", "").split("/"):
                table_keys.add(key.strip())
    assert table_keys, "no key table found in ARCHITECTURE.md"
    assert table_keys == set(KNOWN_KEYS)
