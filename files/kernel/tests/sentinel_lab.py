"""A real Redis Sentinel setup on loopback: one primary, one replica, three sentinels.

Debian's ``redis-server`` and ``redis-sentinel``, each a child process on a free port, with a
data password (``requirepass``/``masterauth``) and a sentinel password, so the kernel's
credentials are exercised as deployed. Failover timing is kept small for tests and says so:
``down-after-milliseconds`` 1000 (a primary silent this long is subjectively down), quorum 2 of
3, ``failover-timeout`` 5000. Production values are the operator's (Debian's default is 30 s
down-after).

Used by tests/test_sentinel.py and bench/sentinel_failover.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

MASTER = "kernel"
DATA_PASSWORD = "data-pw-8Hq2vX"
SENTINEL_PASSWORD = "sentinel-pw-3kLm9"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Fail, never skip: the promise is a real Sentinel (apt package redis-sentinel).
        raise RuntimeError(
            f"{name} not found on PATH; install Debian's redis-server/redis-sentinel"
        )
    return path


def _wait(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout_s}s (last error: {last})")


@dataclass
class Node:
    """One redis-server (the primary, or a replica of ``replica_of``)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    replica_of: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            _binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--requirepass", DATA_PASSWORD,
            "--masterauth", DATA_PASSWORD,
            "--daemonize", "no",
        ]  # fmt: skip
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.client().ping(), 10, f"redis-server on {self.port}")

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            password=DATA_PASSWORD,
            socket_timeout=2,
            **kwargs,  # type: ignore[arg-type]
        )

    def role(self) -> str:
        info = self.client().info("replication")
        return str(info["role"])

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class SentinelProc:
    workdir: Path
    monitor_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        # Sentinel rewrites its config file (epochs, known peers): it must be its own, writable.
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self.workdir}",
                    f"requirepass {SENTINEL_PASSWORD}",
                    f"sentinel monitor {MASTER} 127.0.0.1 {self.monitor_port} 2",
                    f"sentinel auth-pass {MASTER} {DATA_PASSWORD}",
                    f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                    f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER} 1",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        conf.chmod(0o600)
        self.proc = subprocess.Popen(
            [_binary("redis-sentinel"), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: self.client().ping(), 10, f"redis-sentinel on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=SENTINEL_PASSWORD, socket_timeout=2, decode_responses=True
        )

    def master(self) -> dict[str, object]:
        return dict(self.client().sentinel_master(MASTER))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class SentinelLab:
    """Primary + replica + three sentinels; ``failover()`` kills the primary with SIGKILL."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary = Node(workdir / "primary")
        self.replica = Node(workdir / "replica", replica_of=self.primary.port)
        self.sentinels = [
            SentinelProc(workdir / f"sentinel-{n}", self.primary.port) for n in range(3)
        ]

    @property
    def addresses(self) -> str:
        """The value of CORE_KERNEL_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """The kernel's env keys for this lab."""
        return {
            "CORE_KERNEL_REDIS_SENTINELS": self.addresses,
            "CORE_KERNEL_REDIS_SENTINEL_MASTER": MASTER,
            "CORE_KERNEL_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            "CORE_KERNEL_REDIS_PASSWORD": DATA_PASSWORD,
        }

    def secrets(self) -> tuple[str, str]:
        return DATA_PASSWORD, SENTINEL_PASSWORD

    def start(self) -> SentinelLab:
        self.primary.start()
        self.replica.start()
        _wait(self._replica_synced, 20, "replica in sync")
        for s in self.sentinels:
            s.start()
        _wait(self._sentinels_ready, 30, "sentinels see the replica and each other")
        return self

    def _replica_synced(self) -> bool:
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for s in self.sentinels:
            m = s.master()
            if int(m["num-slaves"]) < 1 or int(m["num-other-sentinels"]) < 2:  # type: ignore[call-overload]
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the first answering sentinel reports it."""
        return int(self.sentinels[0].master()["port"])  # type: ignore[call-overload]

    def cut_replication(self) -> None:
        """Stop the replica from receiving writes, the primary still taking them: a wrong
        ``masterauth`` and a killed link, so its reconnects fail. What the primary takes from now
        on is what an asynchronous replica has not got when the primary dies."""
        replica = self.replica.client()
        replica.config_set("masterauth", "cut-" + DATA_PASSWORD[::-1])
        replica.client_kill_filter(_type="master")

    def heal_replication(self) -> None:
        self.replica.client().config_set("masterauth", DATA_PASSWORD)

    def kill_primary(self) -> float:
        """SIGKILL the current primary; returns time.time() of the kill."""
        self.primary.kill9()
        return time.time()

    def wait_promoted(self, timeout_s: float = 30) -> float:
        """Wait until every sentinel names the replica as master and it says so itself."""

        def done() -> bool:
            if not all(int(s.master()["port"]) == self.replica.port for s in self.sentinels):  # type: ignore[call-overload]
                return False
            return self.replica.role() == "master"

        _wait(done, timeout_s, "sentinel failover to the replica")
        return time.time()

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        self.replica.stop()
        self.primary.stop()
