"""After deploy + rollback the host equals the snapshot prepare took before the deploy."""

from __future__ import annotations

import json

import pytest

SNAPSHOT = "/root/pre_deploy_snapshot.json"
SCRIPT = "/root/snapshot.py"
OLD_SHIM = "/home/qt/quantum_trader/services/profit_gate_kernel.py"


@pytest.fixture(scope="module")
def states(host):
    before = json.loads(host.file(SNAPSHOT).content_string)
    now = json.loads(host.check_output("python3 %s", SCRIPT))
    return before, now


def test_files_equal_the_pre_deploy_snapshot(states):
    before, now = states
    differing = {
        path: (before["files"].get(path), now["files"].get(path))
        for path in sorted(set(before["files"]) | set(now["files"]))
        if before["files"].get(path, {"exists": False}) != now["files"].get(path, {"exists": False})
    }
    assert differing == {}


def test_units_equal_the_pre_deploy_snapshot(states):
    before, now = states
    for unit, props in before["units"].items():
        assert now["units"][unit]["LoadState"] == props["LoadState"], unit
        if props["LoadState"] != "not-found":
            assert now["units"][unit]["UnitFileState"] == props["UnitFileState"], unit
            assert now["units"][unit]["ActiveState"] == props["ActiveState"], unit


def test_users_groups_and_membership_restored(states):
    before, now = states
    assert now["groups"] == before["groups"]
    assert now["users"] == before["users"]


def test_the_recovery_log_the_deploy_created_is_kept_in_the_rollbacks_evidence(host, states):
    """Issue 12 item 7: the log directory goes (the deploy created it), its log does not."""
    before, now = states
    assert not before["files"]["/var/log/quantum"]["exists"], "the lab must start without it"
    assert not now["files"]["/var/log/quantum"]["exists"]
    assert "quantum-recover" not in now["users"]
    target = host.file("/var/lib/quantum/evidence/latest").linked_to
    kept = host.check_output("ls -d %s/rollback_*/kept/var/log/quantum", target).split()
    assert len(kept) == 1, kept
    log = host.file(f"{kept[0]}/stream_recover.log")
    assert log.is_file and log.size > 0, "the sweep ran during the deploy and logged"
    assert log.mode == 0o600 and log.user == "root"
    assert host.file(kept[0]).mode == 0o700


def test_old_hand_deployed_shim_restored_byte_identical(host, states):
    before, _ = states
    assert before["files"][OLD_SHIM]["exists"], "prepare must place the old shim"
    assert host.file(OLD_SHIM).sha256sum == before["files"][OLD_SHIM]["sha256"]
    assert "hand-deployed" in host.file(OLD_SHIM).content_string


def test_the_deploy_really_happened_and_the_report_was_written(host):
    latest = host.file("/var/lib/quantum/evidence/latest")
    assert latest.is_symlink
    target = latest.linked_to
    manifest = json.loads(host.file(f"{target}/backup/manifest.json").content_string)
    assert any(f["path"] == OLD_SHIM and f["existed"] for f in manifest["files"])
    reports = host.check_output("ls %s", target).split()
    assert any(name.startswith("ROLLBACK_REPORT_") for name in reports)
    assert host.file(f"{target}/proof/gate_proof.json").exists


def test_services_run_without_the_kernel_dropins(host):
    for unit in ("quantum-execution.service", "quantum-ai-strategy-router.service"):
        out = host.check_output("systemctl show -p DropInPaths,EnvironmentFiles %s", unit)
        assert "20-core-kernel.conf" not in out
        assert "core_gates.env" not in out


# Set by systemd per start, not by any configuration.
PER_START = {"INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID", "MANAGERPID"}


@pytest.mark.parametrize("unit", ["quantum-execution", "quantum-ai-strategy-router"])
def test_services_run_with_the_pre_deploy_environment(host, unit):
    """Issue 12 item 1: after deploy + rollback the running service has exactly the
    environment it had before the deploy: every variable, nothing added, nothing lost."""
    before = json.loads(host.file(f"/root/pre_deploy_env.{unit}.json").content_string)
    now = json.loads(host.file(f"/run/quantum-lab/{unit}.env.json").content_string)
    main_pid = int(host.check_output("systemctl show -p MainPID --value %s.service", unit))
    assert now["pid"] == main_pid, "the environment record is not the running process's"
    # A restart happened in between; else the comparison would be of one process with itself.
    assert now["pid"] != before["pid"]
    assert before["env"].get("BINANCE_API_KEY") == "lab-app-key", before["env"]
    old = {k: v for k, v in before["env"].items() if k not in PER_START}
    new = {k: v for k, v in now["env"].items() if k not in PER_START}
    assert new == old, {
        "added": sorted(new.keys() - old.keys()),
        "lost": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    }
