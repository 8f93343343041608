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


def _restore(host, evidence):
    """The evidence's own copy of the restore program, with the system Python, as ROLLBACK.sh
    runs it."""
    program = host.file(f"{host.file(EVIDENCE_LATEST).linked_to}/restore.py")
    assert program.exists, "the deploy keeps restore.py in its evidence directory"
    cmd = host.run(
        "python3 -I -B %s %s --current-link /run/masktest/current",
        program.path,
        evidence,
    )
    return cmd.rc, (json.loads(cmd.stdout) if cmd.stdout.strip() else {}), cmd.stderr


EVIDENCE_LATEST = "/var/lib/quantum/evidence/latest"


def test_rollback_sh_and_rollback_yml_agree_nothing_is_left_to_do(host):
    """ROLLBACK.sh runs the same program rollback.yml ran: after rollback.yml it finds nothing
    to change (--dry-run), and a real second run changes nothing on real systemd."""
    target = host.file(EVIDENCE_LATEST).linked_to
    dry = host.run("%s/ROLLBACK.sh --dry-run", target)
    assert dry.rc == 0, dry.stderr
    assert "would" not in dry.stderr, dry.stderr
    again = host.run("%s/ROLLBACK.sh", target)
    assert again.rc == 0, again.stderr
    logs = host.check_output("ls %s/logs", target).split()
    result = max(
        name for name in logs if name.startswith("rollback_sh_") and name.endswith(".json")
    )
    data = json.loads(host.file(f"{target}/logs/{result}").content_string)
    assert data["ok"] is True and data["changed"] is False and data["actions"] == []


MASKTEST = "quantum-masktest.service"


def _unit(host):
    out = host.check_output(
        "systemctl show -p LoadState,UnitFileState,ActiveState --no-pager %s", MASKTEST
    )
    return dict(line.split("=", 1) for line in out.splitlines())


def _evidence(host, name, unit_state):
    evidence = f"/root/masktest/{name}"
    manifest = {
        "created": "20260101T000000Z",
        "host": "lab",
        "release_new": "none",
        "current": {"existed": False, "target": ""},
        "group": {"name": "", "existed_before_run": True, "members": [], "members_before": []},
        "files": [],
        "dirs": {},
        "units": {MASKTEST: {"Id": MASKTEST, "SubState": "", **unit_state}},
    }
    host.check_output("install -d -m 0700 %s/backup", evidence)
    host.check_output(
        "printf '%%s' %s > %s/backup/manifest.json && chmod 0600 %s/backup/manifest.json",
        json.dumps(manifest),
        evidence,
        evidence,
    )
    return evidence


def test_a_masked_unit_goes_back_to_masked_and_back_to_enabled_on_real_systemd(host):
    """The old disagreement: ROLLBACK.sh disabled a masked unit, rollback.yml left it alone.
    The one restore masks it again, and unmasks, enables and starts one recorded so."""
    unit_file = f"/run/systemd/system/{MASKTEST}"
    host.check_output(
        "mkdir -p /run/systemd/system && printf '%%s\\n' '[Service]'"
        " 'ExecStart=/bin/sleep infinity' '[Install]' 'WantedBy=multi-user.target' > %s"
        " && systemctl daemon-reload"
        " && systemctl enable --now %s",
        unit_file,
        MASKTEST,
    )
    try:
        assert _unit(host)["ActiveState"] == "active"
        masked = _evidence(
            host,
            "core_kernel_masked",
            {"LoadState": "masked", "UnitFileState": "masked", "ActiveState": "inactive"},
        )
        rc, result, err = _restore(host, masked)
        assert rc == 0, err
        assert "mask quantum-masktest.service" in result["actions"]
        assert _unit(host) == {
            "LoadState": "masked",
            "UnitFileState": "masked",
            "ActiveState": "inactive",
        }
        rc, result, err = _restore(host, masked)
        assert rc == 0 and result["actions"] == [], (err, result)

        enabled = _evidence(
            host,
            "core_kernel_enabled",
            {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active"},
        )
        rc, result, err = _restore(host, enabled)
        assert rc == 0, err
        assert result["actions"][:2] == [
            "unmask quantum-masktest.service",
            "enable quantum-masktest.service",
        ]
        assert _unit(host) == {
            "LoadState": "loaded",
            "UnitFileState": "enabled",
            "ActiveState": "active",
        }
        rc, result, err = _restore(host, enabled)
        assert rc == 0 and result["actions"] == [], (err, result)
    finally:
        host.run(
            "systemctl disable --now %s; systemctl unmask %s; rm -f %s; systemctl daemon-reload;"
            " rm -rf /root/masktest",
            MASKTEST,
            MASKTEST,
            unit_file,
        )
    # the host is as the snapshot says again (/etc/systemd/system is in it)
    assert not host.file(f"/etc/systemd/system/{MASKTEST}").exists
    assert not host.file(f"/etc/systemd/system/multi-user.target.wants/{MASKTEST}").exists
