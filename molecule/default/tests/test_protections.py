"""The protections' poller on the lab host (issue 14 item 4): quantum-protect.service reads the
fake exchange's account and trips the drawdown lock by itself, from the high-water mark.

The test moves the fake's equity over HTTP, waits for the running service to act, and leaves
the host ACTIVE with the fake's equity back where it was.
"""

from __future__ import annotations

import json
import time

import pytest
from lab_pipeline import BIN, EXCHANGE, PY

KERNEL = f"{BIN}/core-kernel"
ENV_FILE = "/etc/quantum/core_gates.env"
UNIT = "quantum-protect.service"
RECORD = "quantum:kernel:protection"

POST = r"""
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST",
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as resp:
    print(resp.read().decode())
"""


def set_wallet(host, wallet: str) -> None:
    host.check_output(
        f"{PY} -c %s %s %s", POST, f"{EXCHANGE}/_account", json.dumps({"wallet": wallet})
    )


def record(host) -> dict[str, str]:
    # --raw: one field or value per line (none of the record's values spans lines)
    values = host.check_output("redis-cli --raw HGETALL %s", RECORD).splitlines()
    return dict(zip(values[::2], values[1::2], strict=True))


def state(host) -> dict:
    return json.loads(host.check_output("%s state --json --config %s", KERNEL, ENV_FILE))


def wait_for(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(1)


@pytest.fixture(autouse=True)
def restore(host):
    yield
    set_wallet(host, "10000")
    host.run("%s resume --force --reason %s --config %s", KERNEL, "molecule: restore", ENV_FILE)


def test_the_poller_runs_hardened_and_reads_the_account(host):
    service = host.service(UNIT)
    assert service.is_running and service.is_enabled
    show = host.check_output("systemctl show -p User,ExecStart,EnvironmentFiles %s", UNIT)
    assert "User=quantum-recover" in show
    assert "protect --interval 5" in show
    # the application's own exchange file, then the kernel's (which overrides none of its keys)
    assert "/etc/quantum/quantum-exchange.env" in show and ENV_FILE in show
    got = wait_for(lambda: record(host).get("hwm"))
    assert got, record(host)
    assert record(host).get("equity") == record(host).get("hwm")


def test_a_drawdown_from_the_peak_trips_reducing_by_itself_and_resume_rearms(host):
    set_wallet(host, "12000")  # a new peak
    assert wait_for(lambda: record(host).get("hwm", "").startswith("12000")), record(host)
    set_wallet(host, "10500")  # 12.5 % below the peak; only 5 % below the starting 10000
    tripped = wait_for(lambda: state(host)["state"] == "REDUCING")
    now = state(host)
    assert tripped, now
    assert now["source"] == "protection" and "MAX_DRAWDOWN" in now["reason"], now
    assert "MAX_DRAWDOWN" in json.dumps(now.get("protection_trips", {})), now
    # the lock does not re-arm by itself, even when equity recovers
    set_wallet(host, "12000")
    time.sleep(12)
    assert state(host)["state"] == "REDUCING"
    # resume starts a new peak: from the stale one (12000) 10500 would trip again at once
    set_wallet(host, "10500")
    time.sleep(7)
    host.check_output(
        "%s resume --reason %s --config %s", KERNEL, "molecule: drawdown reviewed", ENV_FILE
    )
    assert state(host)["state"] == "ACTIVE"
    assert wait_for(lambda: record(host).get("hwm", "").startswith("10500")), record(host)
    time.sleep(12)
    assert state(host)["state"] == "ACTIVE", (state(host), record(host))
