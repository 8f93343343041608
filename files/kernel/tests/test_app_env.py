"""The application's mode and the kernel's secrets (issue 12 items 1, 2, 6).

The kernel's env file carries neither the trading mode (the application's) nor a secret (kept in
a root-only file). These tests load real files from disk as the commands on a host would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core_kernel.config import ConfigError, load_config
from core_kernel.mode import TradingMode, detect_mode

CANARY = "canary-Zq8vX2p-secret"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def _kernel_file(tmp_path: Path, *lines: str) -> Path:
    return _write(
        tmp_path / "core_gates.env", "\n".join(("MIN_NOTIONAL_USD=25", *lines)) + "\n", 0o640
    )


def test_mode_comes_from_the_application_files_only(tmp_path: Path) -> None:
    app = _write(
        tmp_path / "quantum.env",
        "# the application's\nTRADING_MODE=LIVE\nBINANCE_TESTNET=false\n"
        f"BINANCE_API_KEY={CANARY}\nREDIS_URL=redis://127.0.0.1:6379/3\n",
    )
    cfg = load_config(_kernel_file(tmp_path, f"APPLICATION_ENV_FILES={app}"), environ={})
    assert detect_mode(cfg.mode_env()).mode is TradingMode.LIVE
    # Only the mode keys: the application's secrets and its Redis are not taken.
    assert cfg.binance_api_key == ""
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"


def test_switching_the_application_switches_the_kernel(tmp_path: Path) -> None:
    """A mode switch is a change of the application's file; nothing of the kernel holds on."""
    app = _write(tmp_path / "quantum.env", "TRADING_MODE=TESTNET\n")
    kernel = _kernel_file(tmp_path, f"APPLICATION_ENV_FILES={app}")
    assert detect_mode(load_config(kernel, environ={}).mode_env()).mode is TradingMode.TESTNET
    _write(app, "TRADING_MODE=LIVE\nUSE_BINANCE_TESTNET=no\n")
    assert detect_mode(load_config(kernel, environ={}).mode_env()).mode is TradingMode.LIVE


def test_later_files_then_the_kernel_file_then_the_environment_win(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.env", "TRADING_MODE=TESTNET\nBINANCE_TESTNET=true\n")
    second = _write(tmp_path / "b.env", "export TRADING_MODE='LIVE'\n")
    kernel = _kernel_file(tmp_path, f"APPLICATION_ENV_FILES={first},{second}")
    env = load_config(kernel, environ={}).mode_env()
    assert env["TRADING_MODE"] == "LIVE" and env["BINANCE_TESTNET"] == "true"
    # Conflicting evidence stays a conflict (UNKNOWN), never a guess.
    assert detect_mode(env).mode is TradingMode.UNKNOWN
    over = load_config(kernel, environ={"TRADING_MODE": "TESTNET"}).mode_env()
    assert over["TRADING_MODE"] == "TESTNET"


@pytest.mark.parametrize("kind", ["missing", "fifo", "directory"])
def test_an_unusable_application_file_is_skipped_and_the_mode_is_unknown(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "app.env"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    cfg = load_config(_kernel_file(tmp_path, f"APPLICATION_ENV_FILES={path}"), environ={})
    report = detect_mode(cfg.mode_env())
    assert report.mode is TradingMode.UNKNOWN and report.enforce and not report.may_mutate


@pytest.mark.parametrize("value", ["relative/app.env", "/a b.env", "/ok.env,x.env", "/é.env"])
def test_bad_application_env_files_is_one_line_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_kernel_file(tmp_path, f"APPLICATION_ENV_FILES={value}"), environ={})
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith("APPLICATION_ENV_FILES=")


def test_password_comes_from_the_root_only_secrets_file(tmp_path: Path) -> None:
    secrets = _write(tmp_path / "secrets.env", f"CORE_KERNEL_REDIS_PASSWORD={CANARY}\n")
    cfg = load_config(_kernel_file(tmp_path, f"CORE_KERNEL_SECRETS_FILE={secrets}"), environ={})
    assert cfg.redis_password == CANARY
    assert CANARY not in repr(cfg)


def test_services_get_the_secret_from_systemd_not_the_file(tmp_path: Path) -> None:
    """In a service the drop-in's EnvironmentFile= already put the secret in the environment;
    the file (root-only) is not read by the service's unprivileged user."""
    secrets = _write(tmp_path / "secrets.env", "CORE_KERNEL_REDIS_PASSWORD=from-file\n")
    kernel = _kernel_file(tmp_path, f"CORE_KERNEL_SECRETS_FILE={secrets}")
    cfg = load_config(kernel, environ={"CORE_KERNEL_REDIS_PASSWORD": "from-env"})
    assert cfg.redis_password == "from-env"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_secrets_file_others_can_read_is_refused_without_echoing_it(
    tmp_path: Path, mode: int
) -> None:
    secrets = _write(tmp_path / "secrets.env", f"CORE_KERNEL_REDIS_PASSWORD={CANARY}\n", mode)
    with pytest.raises(ConfigError) as err:
        load_config(_kernel_file(tmp_path, f"CORE_KERNEL_SECRETS_FILE={secrets}"), environ={})
    text = "\n".join(err.value.errors)
    assert "must be 0600" in text and CANARY not in text


@pytest.mark.parametrize(
    "body",
    [
        f"MIN_NOTIONAL_USD=1\nCORE_KERNEL_REDIS_PASSWORD={CANARY}\n",
        f"NOT_A_KEY={CANARY}\n",
        f"{CANARY}\n",
    ],
)
def test_a_secrets_file_with_anything_else_is_refused_without_echoing_it(
    tmp_path: Path, body: str
) -> None:
    secrets = _write(tmp_path / "secrets.env", body)
    with pytest.raises(ConfigError) as err:
        load_config(_kernel_file(tmp_path, f"CORE_KERNEL_SECRETS_FILE={secrets}"), environ={})
    text = "\n".join(err.value.errors)
    assert "CORE_KERNEL_SECRETS_FILE=" in text and CANARY not in text


def test_a_password_in_two_places_is_refused(tmp_path: Path) -> None:
    secrets = _write(tmp_path / "secrets.env", f"CORE_KERNEL_REDIS_PASSWORD={CANARY}\n")
    kernel = _kernel_file(
        tmp_path,
        f"CORE_KERNEL_SECRETS_FILE={secrets}",
        "CORE_KERNEL_REDIS_URL=redis://:other@127.0.0.1:6379/0",
    )
    with pytest.raises(ConfigError) as err:
        load_config(kernel, environ={})
    text = "\n".join(err.value.errors)
    assert "in one place" in text and CANARY not in text and "other" not in text


def test_check_config_never_prints_the_secret(tmp_path: Path) -> None:
    secrets = _write(tmp_path / "secrets.env", f"CORE_KERNEL_REDIS_PASSWORD={CANARY}\n")
    kernel = _kernel_file(tmp_path, f"CORE_KERNEL_SECRETS_FILE={secrets}")
    for extra in ([], ["--json"]):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "core_kernel.cli",
                "check-config",
                "--config",
                str(kernel),
                *extra,
            ],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", "")},
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert CANARY not in out.stdout + out.stderr


def test_the_kernel_authenticates_with_the_secrets_file_password(
    tmp_path: Path, redis_server, redis_client
) -> None:
    """A real Redis with a password: the URL has none, the secrets file has it; a command run as
    root (as the playbooks run them) authenticates, and without the file it is 'auth failed'."""
    redis_client.config_set("requirepass", CANARY)
    try:
        secrets = _write(tmp_path / "secrets.env", f"CORE_KERNEL_REDIS_PASSWORD={CANARY}\n")
        url = f"CORE_KERNEL_REDIS_URL={redis_server.url}"
        with_file = _kernel_file(tmp_path, url, f"CORE_KERNEL_SECRETS_FILE={secrets}")
        env = {"PATH": os.environ.get("PATH", "")}
        cmd = [sys.executable, "-m", "core_kernel.cli", "state", "--json", "--config"]
        ok = subprocess.run(
            [*cmd, str(with_file)], check=False, capture_output=True, text=True, env=env
        )
        assert ok.returncode == 0, ok.stderr
        assert CANARY not in ok.stdout + ok.stderr
        without = _write(tmp_path / "bare.env", f"MIN_NOTIONAL_USD=25\n{url}\n", 0o640)
        bad = subprocess.run(
            [*cmd, str(without)], check=False, capture_output=True, text=True, env=env
        )
        assert bad.returncode != 0
        assert "auth" in bad.stderr.lower() and "Traceback" not in bad.stderr, bad.stderr
    finally:
        redis_client.execute_command("AUTH", CANARY)
        redis_client.config_set("requirepass", "")
