"""An interrupted deploy is never reported clean (issue 12 item 4).

A deploy that changes the env file (MIN_NOTIONAL_USD=26) is killed - the whole ansible-playbook
process group, as a dropped SSH link or Ctrl-C would - as soon as the env file changed on the
host. verify.yml must then fail (a change is pending); the next deploy (the inventory's values
again) must finish the interrupted one in its evidence directory (restart, proof, after/) and
verify.yml must pass. Then a service made to run an older configuration than the one on disk
must fail verify.yml.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PROJECT / "molecule"))
from controller import run_playbook, start_playbook  # noqa: E402

ENV_FILE = "/etc/quantum/core_gates.env"
MARKER = "/var/lib/quantum/evidence/PENDING.json"
WORKER = "quantum-execution.service"


@pytest.fixture(scope="module")
def instance(host) -> str:
    return str(host.backend.name)


def started(host, unit: str) -> int:
    out = host.check_output(
        "systemctl show --timestamp=unix -p ActiveEnterTimestamp --value %s", unit
    )
    return int(out.strip().lstrip("@"))


def test_an_interrupted_deploy_fails_verify_and_the_next_run_finishes_it(host, instance, tmp_path):
    worker_start = started(host, WORKER)
    proc = start_playbook(
        tmp_path, instance, "lab", "deploy.yml", "-e", "core_kernel_min_notional_usd=26"
    )
    try:
        deadline = time.monotonic() + 300
        while "\nMIN_NOTIONAL_USD=26\n" not in host.file(ENV_FILE).content_string:
            assert proc.poll() is None, "the deploy ended before it changed the env file"
            assert time.monotonic() < deadline, "the env file never changed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(3)  # let whatever the killed run had started on the host end
    assert host.file(MARKER).exists, "the change in progress was not recorded"
    pending = json.loads(host.file(MARKER).content_string)["evidence"]
    print(f"interrupted; worker restarted by it: {started(host, WORKER) != worker_start}")

    rc, out, _ = run_playbook(tmp_path, instance, "lab", "verify.yml")
    assert rc != 0, out[-3000:]
    assert "did not finish" in out, out[-3000:]

    rc, out, seconds = run_playbook(tmp_path, instance, "lab", "deploy.yml")
    print(f"finishing run: rc={rc} in {seconds:.1f} s")
    assert rc == 0, out[-3000:]
    assert not host.file(MARKER).exists
    assert "\nMIN_NOTIONAL_USD=25\n" in host.file(ENV_FILE).content_string
    run = json.loads(host.file(f"{pending}/logs/run.json").content_string)
    assert f"finished the interrupted deploy {pending}" in run["changed"], run
    assert ENV_FILE in run["changed"], run
    proof = json.loads(host.file(f"{pending}/proof/gate_proof.json").content_string)
    assert proof["ok"] is True
    assert host.file(f"{pending}/after/unit_states.json").exists
    assert started(host, WORKER) > worker_start

    rc, out, _ = run_playbook(tmp_path, instance, "lab", "verify.yml")
    assert rc == 0, out[-3000:]


def test_verify_fails_when_a_service_runs_an_older_configuration(host, instance, tmp_path):
    time.sleep(1.1)
    host.check_output("touch %s", ENV_FILE)
    rc, out, _ = run_playbook(tmp_path, instance, "lab", "verify.yml")
    assert rc != 0
    assert "runs with an older configuration than the one on disk" in out, out[-3000:]
    units = ("quantum-execution", "quantum-ai-strategy-router", "quantum-protect")
    host.check_output("systemctl restart " + " ".join(f"{u}.service" for u in units))
