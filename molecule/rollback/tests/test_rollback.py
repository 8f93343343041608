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


def test_group_membership_restored(states):
    before, now = states
    assert now["groups"] == before["groups"]


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
