"""Shared fixtures: a real redis-server per test session, on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process the tests own; restartable for fault injection."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            # Fail, never skip: the suite's promise is a real Redis.
            raise RuntimeError("redis-server not found on PATH; install Debian's redis-server")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


#: What a kernel process takes from its environment for its mode, its Redis and its env file.
KERNEL_ENV_KEYS = (
    "TRADING_MODE",
    "BINANCE_TESTNET",
    "USE_BINANCE_TESTNET",
    "REDIS_URL",
    "CORE_KERNEL_REDIS_URL",
    "CORE_KERNEL_REDIS_SENTINELS",
    "CORE_KERNEL_REDIS_SENTINEL_MASTER",
    "CORE_KERNEL_REDIS_SENTINEL_USERNAME",
    "CORE_KERNEL_REDIS_SENTINEL_PASSWORD",
    "CORE_KERNEL_REDIS_USERNAME",
    "CORE_KERNEL_REDIS_PASSWORD",
    "CORE_KERNEL_REDIS_DB",
    "CORE_GATES_ENV",
)


@pytest.fixture
def no_kernel_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the machine running the tests: no such variables, no default env file."""
    for key in KERNEL_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("core_kernel.config.DEFAULT_PATH", tmp_path / "absent.env")
