"""Fleet rollout (issue 15 item 4): playbooks/deploy.yml over four lab hosts in its default
batches [1, 25%, 100%] = [fleet-1] (canary), [fleet-2], [fleet-3, fleet-4].

1. A rollout where fleet-2 gets MIN_NOTIONAL_USD=0 (a valid value that switches the gate off,
   which the gate proof refuses on the host): fleet-1 is deployed, fleet-2 is rolled back to
   exactly its pre-run state and fails, the rollout stops, fleet-3 and fleet-4 are never touched.
2. A clean rollout over all four: every host deployed and proven, batch by batch.

The rollouts run in this order (module fixtures, requested in order by the tests below); each
host is compared with a snapshot taken on it just before the run (molecule/rollback/snapshot.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from controller import PROJECT, ansible_playbook

HOSTS = [f"quantum-lab-fleet-{n}" for n in range(1, 5)]
CANARY, FAILING, UNREACHED = HOSTS[0], HOSTS[1], HOSTS[2:]
SERVICES = ["quantum-execution.service", "quantum-ai-strategy-router.service"]
PLAY = "PLAY [Deploy the core trading kernel]"
EVIDENCE = "/var/lib/quantum/evidence"
TIMINGS = PROJECT / "build" / "fleet-timings.json"


def _host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{name}")


def _snapshot(name: str) -> dict:
    host = _host(name)
    state = json.loads(host.check_output("python3 /root/snapshot.py"))
    # the controller's evidence/<host>/ keeps earlier runs: compared before/after, not must-be-empty
    controller = PROJECT / "evidence" / name
    state["controller_evidence"] = (
        sorted(p.name for p in controller.iterdir()) if controller.is_dir() else []
    )
    # Set by systemd per start: unchanged means the service was not restarted.
    state["invocations"] = {
        unit: host.check_output("systemctl show -p InvocationID --value %s", unit)
        for unit in SERVICES
    }
    return state


def _rollout(
    tmp: Path, label: str, fault_host_vars: dict[str, dict[str, object]]
) -> tuple[int, str, float]:
    """deploy.yml over the four hosts with inventory/lab's group_vars (as an operator runs it)."""
    inv = tmp / "inventory"
    inv.mkdir()
    (inv / "group_vars").symlink_to(PROJECT / "inventory" / "lab" / "group_vars")
    lines = ["quantum_kernel:", "  hosts:"]
    for name in HOSTS:
        lines += [
            f"    {name}:",
            "      ansible_connection: lab_podman",
            "      ansible_python_interpreter: /usr/bin/python3",
        ]
        lines += [f"      {k}: {json.dumps(v)}" for k, v in fault_host_vars.get(name, {}).items()]
    (inv / "hosts.yml").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        # a timestamp on every task banner: the batches' durations are read from it
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    # Written as it runs (build/fleet-<label>.log): a slow or stuck rollout can be watched.
    TIMINGS.parent.mkdir(exist_ok=True)
    log = TIMINGS.parent / f"fleet-{label}.log"
    start = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.run(
            [ansible_playbook(), "-i", str(inv), "playbooks/deploy.yml"],
            cwd=PROJECT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=3000,
            check=False,
        )
    return proc.returncode, log.read_text(), time.monotonic() - start


def _batches(out: str) -> list[set[str]]:
    """The hosts that ran tasks in each batch (ansible prints the play banner once per batch)."""
    line = re.compile(r"^(?:ok|changed|fatal|skipping): \[(quantum-lab-fleet-\d)\]", re.M)
    return [set(line.findall(section)) for section in out.split(PLAY)[1:]]


# profile_tasks: "... 11:53:09 +0000 (0:00:01.234)       0:05:10.123 ****", the last figure is
# the time since the run started.
ELAPSED = re.compile(r"\)\s+(\d+):(\d\d):(\d\d\.\d+) \*+\s*$", re.M)


def _batch_seconds(out: str) -> list[float]:
    """Seconds from each batch's first task banner to the next batch's (or the run's end)."""
    marks = []
    for section in out.split(PLAY)[1:]:
        found = ELAPSED.search(section)
        if found:
            h, m, sec = found.groups()
            marks.append(int(h) * 3600 + int(m) * 60 + float(sec))
    last = [int(h) * 3600 + int(m) * 60 + float(sec) for h, m, sec in ELAPSED.findall(out)]
    ends = marks[1:] + last[-1:]
    return [round(end - start, 1) for start, end in zip(marks, ends, strict=False)]


def _record(name: str, seconds: float, out: str) -> None:
    TIMINGS.parent.mkdir(exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = {"seconds": round(seconds, 1), "batches": _batch_seconds(out)}
    TIMINGS.write_text(json.dumps(data, indent=1) + "\n")
    print(f"fleet timing: {name} {data[name]}", file=sys.stderr)


def _differences(before: dict, after: dict) -> dict:
    diff: dict[str, object] = {}
    for path in sorted(set(before["files"]) | set(after["files"])):
        b = before["files"].get(path, {"exists": False})
        a = after["files"].get(path, {"exists": False})
        if a != b:
            diff[path] = (b, a)
    for key in ("units", "users", "groups", "invocations", "controller_evidence"):
        if before[key] != after[key]:
            diff[key] = (before[key], after[key])
    return diff


@pytest.fixture(scope="module")
def failed_rollout(tmp_path_factory):
    before = {name: _snapshot(name) for name in HOSTS}
    rc, out, seconds = _rollout(
        tmp_path_factory.mktemp("failed"),
        "rollout_failing_at_fleet-2",
        {FAILING: {"core_kernel_min_notional_usd": 0}},
    )
    _record("rollout_failing_at_fleet-2", seconds, out)
    after = {name: _snapshot(name) for name in HOSTS}
    return rc, out, before, after


@pytest.fixture(scope="module")
def clean_rollout(failed_rollout, tmp_path_factory):
    rc, out, seconds = _rollout(tmp_path_factory.mktemp("clean"), "rollout_clean_4_hosts", {})
    _record("rollout_clean_4_hosts", seconds, out)
    return rc, out


# --- 1. the failing rollout ----------------------------------------------------------------------


def test_failing_rollout_stops_after_the_failing_batch(failed_rollout):
    rc, out, _, _ = failed_rollout
    assert rc != 0, out[-3000:]
    assert _batches(out) == [{CANARY}, {FAILING}], out[-3000:]
    final = rf"fatal: \[{FAILING}\]: FAILED! =>.{{0,400}}deploy failed and was rolled back"
    assert re.search(final, out, re.S), out[-3000:]
    for name in UNREACHED:
        assert f"[{name}]" not in out, f"{name} was reached"


def test_the_host_failed_its_gate_proof_and_was_rolled_back(failed_rollout):
    host = _host(FAILING)
    latest = host.file(f"{EVIDENCE}/latest").linked_to
    run = json.loads(host.file(f"{latest}/logs/run.json").content_string)
    assert run["rolled_back"] is True
    assert run["failure"].startswith("Run the gate proof on the host"), run["failure"]
    assert not host.file(f"{EVIDENCE}/PENDING.json").exists
    report = PROJECT / "evidence" / FAILING / "latest" / "ACTIVATION_REPORT.md"
    assert "**ROLLED BACK**" in report.read_text()


def test_the_failing_host_is_restored_to_its_pre_run_state(failed_rollout):
    _, _, before, after = failed_rollout
    # snapshot.py lists what exists under its trees: no entry = no such file
    assert "/etc/quantum/core_gates.env" not in before[FAILING]["files"]
    diff = _differences(before[FAILING], after[FAILING])
    # The services were restarted twice (deploy, rollback) and the evidence was fetched: the only
    # permitted differences.
    assert set(diff) <= {"invocations", "controller_evidence"}, diff
    for unit in SERVICES:
        out = _host(FAILING).check_output("systemctl show -p DropInPaths,ActiveState %s", unit)
        assert "20-core-kernel.conf" not in out and "ActiveState=active" in out, out


@pytest.mark.parametrize("name", UNREACHED)
def test_hosts_of_later_batches_are_untouched(failed_rollout, name):
    _, _, before, after = failed_rollout
    assert _differences(before[name], after[name]) == {}
    host = _host(name)
    for path in (
        "/opt/quantum/core-kernel",
        "/etc/quantum/core_gates.env",
        "/etc/systemd/system/quantum-execution.service.d",
        "/etc/systemd/system/quantum-stream-recover.timer",
        EVIDENCE,
    ):
        assert not host.file(path).exists, path


def test_the_canary_of_the_failing_rollout_stays_deployed(failed_rollout):
    _, _, before, after = failed_rollout
    assert "/etc/quantum/core_gates.env" not in before[CANARY]["files"]
    assert after[CANARY]["files"]["/etc/quantum/core_gates.env"]["exists"]
    _assert_deployed(CANARY)


# --- 2. the clean rollout ------------------------------------------------------------------------


def _assert_deployed(name: str) -> None:
    host = _host(name)
    assert host.file("/opt/quantum/core-kernel/current").is_symlink
    latest = host.file(f"{EVIDENCE}/latest").linked_to
    run = json.loads(host.file(f"{latest}/logs/run.json").content_string)
    assert run["rolled_back"] is False, run
    proof = json.loads(host.file(f"{latest}/proof/gate_proof.json").content_string)
    assert proof["ok"] is True and proof["passed"] == proof["total"]
    assert not host.file(f"{EVIDENCE}/PENDING.json").exists
    for unit in SERVICES:
        out = host.check_output("systemctl show -p DropInPaths,ActiveState %s", unit)
        assert "20-core-kernel.conf" in out and "ActiveState=active" in out, out
    assert host.service("quantum-stream-recover.timer").is_running
    report = PROJECT / "evidence" / name / "latest" / "ACTIVATION_REPORT.md"
    assert "**ACTIVE**" in report.read_text()


def test_clean_rollout_runs_every_batch(clean_rollout):
    rc, out = clean_rollout
    assert rc == 0, out[-3000:]
    assert _batches(out) == [{CANARY}, {FAILING}, set(UNREACHED)], out[-3000:]
    recap = out[out.rindex("PLAY RECAP") :]
    for name in HOSTS:
        assert re.search(rf"^{name}\s*:.*failed=0", recap, re.M), recap


@pytest.mark.parametrize("name", HOSTS)
def test_clean_rollout_deploys_and_proves_every_host(clean_rollout, name):
    _assert_deployed(name)
