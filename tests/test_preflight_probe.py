"""Preflight's Redis probe (roles/core_kernel/tasks/preflight.yml) against real Redis processes.

The probe runs on the host with the system Python before anything changes; it must tell apart
"auth failed", "wrong database", "unreachable" and, with Sentinel, "no sentinel names the
master" and "the sentinel refused us" - and talk to the master the sentinels name, as the
kernel's client will. The script is taken from the role file itself, so the test and the deploy
run the same code.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[1] / "roles" / "core_kernel" / "tasks" / "preflight.yml"
CANARY = "Probe-Canary-7f3a"


def _probe_source() -> str:
    tasks = yaml.safe_load(ROLE.read_text(encoding="utf-8"))
    task = next(t for t in tasks if t.get("name", "").startswith("Preflight | Redis accepts"))
    return str(task["vars"]["_core_kernel_pf_redis_probe"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    work = tmp_path_factory.mktemp("probe")
    data, sentinel = _free_port(), _free_port()
    conf = work / "sentinel.conf"
    conf.write_text(
        f"port {sentinel}\nsentinel monitor kernel 127.0.0.1 {data} 1\n"
        f"sentinel auth-pass kernel {CANARY}\nrequirepass s-{CANARY}\n",
        encoding="utf-8",
    )
    procs = [
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(data),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                CANARY,
                "--dir",
                str(work),
            ],
            stdout=subprocess.DEVNULL,
        )
    ]
    _wait(data)
    procs.append(subprocess.Popen(["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL))
    _wait(sentinel)
    try:
        yield {"data": data, "sentinel": sentinel}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def probe(lab: dict[str, int], **cfg: str) -> dict[str, object]:
    base = {
        "url": f"redis://127.0.0.1:{lab['data']}/0",
        "username": "",
        "password": "",
        "sentinels": "",
        "master": "",
        "sentinel_username": "",
        "sentinel_password": "",
        "db": "0",
    }
    base.update(cfg)
    done = subprocess.run(
        [sys.executable, "-I", "-c", _probe_source(), "2"],
        input=json.dumps(base),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert CANARY not in done.stdout
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_url_with_the_password_variable(lab: dict[str, int]) -> None:
    assert probe(lab, password=CANARY)["kind"] == "ok"
    assert probe(lab)["kind"] == "auth"
    assert probe(lab, password="wrong")["kind"] == "auth"
    wrong_db = f"redis://127.0.0.1:{lab['data']}/99"
    assert probe(lab, password=CANARY, url=wrong_db) | {"detail": ""} == {
        "ok": False,
        "kind": "database",
        "detail": "",
        "where": f"127.0.0.1:{lab['data']}",
        "db": "99",
    }
    assert probe(lab, url="redis://127.0.0.1:1/0")["kind"] == "unreachable"


def test_sentinel_names_the_master_and_the_probe_talks_to_it(lab: dict[str, int]) -> None:
    sentinels = f"127.0.0.1:1,127.0.0.1:{lab['sentinel']}"  # the first one is down: next
    good = {"sentinels": sentinels, "master": "kernel", "sentinel_password": f"s-{CANARY}"}
    result = probe(lab, password=CANARY, **good)
    assert result["kind"] == "ok" and result["where"] == f"127.0.0.1:{lab['data']}", result
    assert probe(lab, password="wrong", **good)["kind"] == "auth"
    refused = probe(lab, password=CANARY, **{**good, "sentinel_password": "wrong"})
    assert refused["kind"] == "sentinel_auth", refused
    unknown = probe(lab, password=CANARY, **{**good, "master": "other"})
    assert unknown["kind"] == "sentinel" and "knows no master other" in str(unknown["detail"])
    # With sentinels the database is core_kernel_redis_db, never the URL's.
    no_db = probe(lab, password=CANARY, **good, db="99")
    assert (no_db["kind"], no_db["db"]) == ("database", "99"), no_db
    down = probe(lab, sentinels="127.0.0.1:1,127.0.0.1:2", master="kernel")
    assert down["kind"] == "sentinel", down
