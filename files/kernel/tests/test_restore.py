"""core-kernel restore on a temporary root: files, links, the release switch, run-time
directories, refusals, dry-run and idempotence. The unit part is decided by pure functions
(tested here for every unit-file state) and proven on real systemd by molecule/rollback."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core_kernel import restore

SOURCE = Path(restore.__file__)
CORE_KERNEL = shutil.which("core-kernel", path=str(Path(sys.executable).parent))
SYSTEM_PYTHON = "/usr/bin/python3"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under root: type, bytes/target, owner, group, mode."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                body: Any = ("link", os.readlink(path))
            elif path.is_dir():
                body = ("dir",)
            else:
                body = ("file", path.read_bytes())
            out[str(path.relative_to(root))] = (*body, st.st_uid, st.st_gid, st.st_mode)
    return out


class Host:
    """A temporary root that looks like a host before a deploy, an evidence directory with its
    backup, and the same host after the deploy changed it."""

    ENV = b"MIN_NOTIONAL_USD=25\n"
    SHIM = b"# old hand-deployed shim\n"

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.evidence_root = tmp / "evidence"
        self.evidence = self.evidence_root / "core_kernel_20260101T000000Z"
        self.root.mkdir()
        self.evidence_root.mkdir(mode=0o700)
        self.evidence.mkdir(mode=0o700)

    def p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def before(self) -> None:
        """The host as the deploy found it."""
        self.p("/etc/quantum").mkdir(parents=True)
        self.p("/etc/quantum/core_gates.env").write_bytes(self.ENV)
        os.chmod(self.p("/etc/quantum/core_gates.env"), 0o640)
        shim = self.p("/home/qt/services/profit_gate_kernel.py")
        shim.parent.mkdir(parents=True)
        shim.write_bytes(self.SHIM)
        os.chown(shim, 65534, 65534)  # nobody:nogroup, so owner restore is proven
        os.chmod(shim, 0o604)
        self.p("/opt/quantum/core-kernel/releases/old").mkdir(parents=True)
        self.p("/opt/quantum/core-kernel/releases/new").mkdir(parents=True)
        os.symlink("releases/old", self.p("/opt/quantum/core-kernel/current"))
        self.p("/etc/alt").mkdir()
        # the parents of what the deploy creates exist on any host
        self.p("/etc/systemd/system").mkdir(parents=True)
        self.p("/usr/local").mkdir(parents=True)
        self.p("/var/log").mkdir(parents=True)
        os.symlink("/etc/quantum/core_gates.env", self.p("/etc/alt/gates.env"))

    def record(self) -> None:
        """What the role's snapshot + evidence_before.yml write: manifest and backup copies."""
        backup = self.evidence / "backup"
        backup.mkdir(mode=0o700)
        files: list[dict[str, Any]] = []
        for path, existed in (
            ("/etc/quantum/core_gates.env", True),
            ("/home/qt/services/profit_gate_kernel.py", True),
            ("/etc/alt/gates.env", True),
            ("/etc/systemd/system/quantum-execution.service.d/20-core-kernel.conf", False),
            ("/usr/local/bin/quantum_stream_recover.sh", False),
        ):
            host = self.p(path)
            if not existed:
                files.append({"path": path, "existed": False})
                continue
            if host.is_symlink():
                files.append(
                    {
                        "path": path,
                        "existed": True,
                        "type": "link",
                        "link_target": os.readlink(host),
                    }
                )
                continue
            data = host.read_bytes()
            copy = backup / path.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
            st = host.stat()
            files.append(
                {
                    "path": path,
                    "existed": True,
                    "type": "file",
                    "sha256": sha(data),
                    "owner": "root" if st.st_uid == 0 else "nobody",
                    "group": "root" if st.st_gid == 0 else "nogroup",
                    "mode": f"{st.st_mode & 0o7777:04o}",
                    "link_target": "",
                    "backup": path.lstrip("/"),
                }
            )
        self.manifest: dict[str, Any] = {
            "created": "20260101T000000Z",
            "host": "lab",
            "release_new": "new",
            "current": {"existed": True, "target": "releases/old"},
            "group": {
                "name": "root",
                "existed_before_run": True,
                "members": [],
                "members_before": [],
            },
            "files": files,
            "dirs": {
                "/etc/quantum": True,
                "/home/qt/services": True,
                "/etc/alt": True,
                "/etc/systemd/system/quantum-execution.service.d": False,
                "/usr/local/bin": False,
            },
            "owned_dirs": {"/var/log/quantum": False},
            "users": {},
            "units": {},
        }
        self.write_manifest()

    def write_manifest(self) -> None:
        path = self.evidence / "backup" / "manifest.json"
        path.write_text(json.dumps(self.manifest))
        os.chmod(path, 0o600)

    def deploy(self) -> None:
        """What a deploy did to the host."""
        env = self.p("/etc/quantum/core_gates.env")
        env.write_bytes(b"MIN_NOTIONAL_USD=30\nNEW_KEY=1\n")
        os.chmod(env, 0o644)
        shim = self.p("/home/qt/services/profit_gate_kernel.py")
        shim.unlink()
        shim.write_bytes(b"from core_kernel.profit_gate_kernel import *\n")
        dropin = self.p("/etc/systemd/system/quantum-execution.service.d/20-core-kernel.conf")
        dropin.parent.mkdir(parents=True)
        dropin.write_text("[Service]\nEnvironmentFile=/etc/quantum/core_gates.env\n")
        script = self.p("/usr/local/bin/quantum_stream_recover.sh")
        script.parent.mkdir(parents=True)
        script.write_text("#!/bin/sh\n")
        self.p("/etc/alt/gates.env").unlink()
        os.symlink("/elsewhere", self.p("/etc/alt/gates.env"))
        current = self.p("/opt/quantum/core-kernel/current")
        current.unlink(missing_ok=True)
        os.symlink("releases/new", current)
        log = self.p("/var/log/quantum/stream_recover.log")
        log.parent.mkdir(parents=True)
        log.write_text("sweep ok\n")
        (self.evidence_root / "PENDING.json").write_text('{"evidence": "x"}\n')
        # the no-op fast path's record of the deployed state (roles/core_kernel/tasks/record.yml)
        (self.evidence_root / restore.APPLIED_RECORD).write_text('{"state": "x"}\n')

    def argv(self, *extra: str) -> list[str]:
        return [
            str(self.evidence),
            "--root",
            str(self.root),
            "--stamp",
            "20260102T000000Z",
            *extra,
        ]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    h.before()
    return h


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = restore.main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def test_restores_the_before_state_exactly_and_a_second_run_changes_nothing(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    pristine = tree(host.root)
    host.record()
    host.deploy()
    assert tree(host.root) != pristine

    code, result, err = run(host.argv(), capsys)

    assert code == 0, err
    assert result["ok"] is True and result["changed"] is True
    # byte-identical, owner and mode included; created files, dirs and the log dir gone
    assert tree(host.root) == pristine
    assert not (host.evidence_root / "PENDING.json").exists()
    # the record of the deployed state goes with it: the next deploy must not trust it
    assert not (host.evidence_root / restore.APPLIED_RECORD).exists()
    # the recovery log the deploy created is kept in the rollback's evidence, root's alone
    kept = host.evidence / "rollback_20260102T000000Z/kept/var/log/quantum"
    assert (kept / "stream_recover.log").read_text() == "sweep ok\n"
    assert (kept / "stream_recover.log").stat().st_mode & 0o777 == 0o600
    assert kept.stat().st_mode & 0o777 == 0o700
    # every directory on the way, the rollback's own included (made as kept/'s parents)
    for parent in kept.parents:
        if parent == host.evidence:
            break
        assert parent.stat().st_mode & 0o777 == 0o700, parent
    written = json.loads((host.evidence / "rollback_20260102T000000Z/result.json").read_text())
    assert written == result
    assert (host.evidence / "rollback_20260102T000000Z/result.json").stat().st_mode & 0o777 == 0o600
    assert (
        "remove /usr/local/bin/quantum_stream_recover.sh (did not exist before)"
        in result["actions"]
    )

    code, again, err = run(host.argv("--stamp", "20260103T000000Z"), capsys)
    assert code == 0, err
    assert again["ok"] is True
    assert again["changed"] is False and again["actions"] == []
    assert tree(host.root) == pristine


def test_dry_run_lists_every_change_and_changes_nothing(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.record()
    host.deploy()
    deployed = tree(host.root)
    evidence = tree(host.evidence_root)

    code, plan, err = run(host.argv("--dry-run"), capsys)

    assert code == 0, err
    assert plan["dry_run"] is True and plan["changed"] is True
    assert tree(host.root) == deployed
    assert tree(host.evidence_root) == evidence  # not even a result file
    actions = "\n".join(plan["actions"])
    for expected in (
        "restore /etc/quantum/core_gates.env (root:root 0640)",
        "restore /home/qt/services/profit_gate_kernel.py (nobody:nogroup 0604)",
        "restore link /etc/alt/gates.env -> /etc/quantum/core_gates.env",
        "remove /etc/systemd/system/quantum-execution.service.d/20-core-kernel.conf",
        "/opt/quantum/core-kernel/current back to releases/old",
        "keep /var/log/quantum",
        "PENDING.json",
        restore.APPLIED_RECORD,
    ):
        assert expected in actions
    assert "would restore" in err
    # the real run does exactly what the plan listed (the empty dirs show once their file is gone)
    code, result, _ = run(host.argv(), capsys)
    assert code == 0
    assert set(plan["actions"]) <= set(result["actions"])
    assert {a for a in result["actions"] if a not in plan["actions"]} == {
        "remove empty directory /etc/systemd/system/quantum-execution.service.d"
        " (created by the deploy)",
        "remove empty directory /usr/local/bin (created by the deploy)",
    }


def test_no_current_before_means_none_after(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.p("/opt/quantum/core-kernel/current").unlink()
    pristine = tree(host.root)
    host.record()
    host.manifest["current"] = {"existed": False, "target": ""}
    host.write_manifest()
    host.deploy()
    code, _result, err = run(host.argv(), capsys)
    assert code == 0, err
    assert tree(host.root) == pristine


def test_a_directory_the_deploy_created_is_kept_when_something_else_lives_there(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.record()
    host.deploy()
    (host.p("/usr/local/bin") / "someone-elses-tool").write_text("x")
    code, result, _ = run(host.argv(), capsys)
    assert code == 0 and result["ok"]
    assert (host.p("/usr/local/bin") / "someone-elses-tool").exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda h: (h.evidence / "backup/etc/quantum/core_gates.env").write_bytes(b"x"), "sha256"),
        (lambda h: (h.evidence / "backup/etc/quantum/core_gates.env").unlink(), "missing"),
    ],
)
def test_a_damaged_backup_is_refused_before_anything_changes(
    host: Host, capsys: pytest.CaptureFixture[str], damage: Any, reason: str
) -> None:
    host.record()
    host.deploy()
    damage(host)
    deployed = tree(host.root)
    code, result, err = run(host.argv(), capsys)
    assert code == restore.EXIT_BACKUP
    assert result == {}
    assert err.count("\n") == 1 and reason in err and "nothing changed" in err
    assert tree(host.root) == deployed


def _set(manifest: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        manifest = manifest[int(key)] if key.isdigit() else manifest[key]  # type: ignore[index]
    last = keys[-1]
    if last.isdigit():
        manifest[int(last)] = value  # type: ignore[index]
    else:
        manifest[last] = value


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("files.0.path", "/etc/../etc/shadow", "not a normalised path"),
        ("files.0.path", "etc/quantum/core_gates.env", "not an absolute path"),
        ("files.0.backup", "../../../etc/shadow", "not inside backup/"),
        ("files.0.backup", "/etc/shadow", "not inside backup/"),
        ("files.0.mode", "rwx", "not an octal mode"),
        ("files.0.sha256", "abc", "not a sha256"),
        ("files.0.type", "fifo", "not file, link or other"),
        ("owned_dirs", {"/var/log/../../etc": False}, "not a normalised path"),
        ("units", {"-H evil": {}}, "not a unit name"),
        ("users", {"root;rm": False}, "not a user name"),
        ("files", "nope", "files: not a list"),
        ("current", {"existed": True, "target": ""}, "current.target"),
    ],
)
def test_a_hostile_or_malformed_manifest_is_refused_naming_the_field(
    host: Host, capsys: pytest.CaptureFixture[str], field: str, value: Any, reason: str
) -> None:
    host.record()
    host.deploy()
    _set(host.manifest, field, value)
    host.write_manifest()
    deployed = tree(host.root)
    code, _, err = run(host.argv(), capsys)
    assert code == restore.EXIT_REFUSED
    assert err.count("\n") == 1 and reason in err, err
    assert "Traceback" not in err
    assert tree(host.root) == deployed


def test_what_is_not_a_kernel_evidence_directory_is_refused(
    host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "some_dir"
    other.mkdir()
    code, _, err = run([str(other), "--root", str(host.root)], capsys)
    assert code == 2 and "not a kernel evidence directory" in err
    code, _, err = run([str(tmp_path / "absent"), "--root", str(host.root)], capsys)
    assert code == 2 and "not a directory" in err
    (other / "backup").mkdir()
    (other / "backup/manifest.json").write_text('{"files": []}')
    code, _, err = run([str(other), "--root", str(host.root)], capsys)
    assert code == 2 and "missing created" in err and "not a core_kernel manifest" in err
    (other / "backup/manifest.json").write_text("{not json")
    code, _, err = run([str(other), "--root", str(host.root)], capsys)
    assert code == 2 and "not JSON" in err


def test_a_manifest_others_may_write_is_refused(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.record()
    os.chmod(host.evidence / "backup/manifest.json", 0o666)
    code, _, err = run(host.argv(), capsys)
    assert code == 2 and "writable by another user" in err


def test_root_prefix_never_touches_units_or_users(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.record()
    host.manifest["users"] = {"quantum-recover": False}
    host.write_manifest()
    code, _, err = run(host.argv(), capsys)
    assert code == 2 and "only restored on the real root" in err


def test_a_step_that_fails_part_way_says_so_and_a_rerun_finishes(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    pristine = tree(host.root)
    host.record()
    host.deploy()
    # a directory where the deploy's script was: the restore cannot remove it as a file
    script = host.p("/usr/local/bin/quantum_stream_recover.sh")
    script.unlink()
    script.mkdir()
    code, _, err = run(host.argv(), capsys)
    assert code == restore.EXIT_PARTIAL
    assert err.strip().splitlines()[-1].startswith("restore: failed part-way, run it again:")
    assert "quantum_stream_recover.sh" in err
    assert (host.evidence / restore.IN_PROGRESS).exists()
    script.rmdir()
    code, _result, err = run(host.argv(), capsys)
    assert code == 0, err
    assert tree(host.root) == pristine
    assert not (host.evidence / restore.IN_PROGRESS).exists()


def test_the_evidence_copy_runs_with_the_system_python_alone(host: Host, tmp_path: Path) -> None:
    """ROLLBACK.sh runs restore.py from the evidence directory with /usr/bin/python3 -I: no
    venv, no core_kernel package, no third-party module - a broken release cannot stop it."""
    pristine = tree(host.root)
    host.record()
    host.deploy()
    copy = host.evidence / "restore.py"
    shutil.copy(SOURCE, copy)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-I", str(copy), *host.argv()],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    assert tree(host.root) == pristine


def test_core_kernel_restore_is_the_same_command(host: Host) -> None:
    assert CORE_KERNEL, "core-kernel console script not installed next to the interpreter"
    host.record()
    host.deploy()
    proc = subprocess.run(
        [CORE_KERNEL, "restore", *host.argv("--dry-run")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dry_run"] is True


def test_restore_imports_nothing_but_the_standard_library() -> None:
    """Stdlib only: its imports are all in sys.stdlib_module_names."""
    tree_ = ast.parse(SOURCE.read_text())
    names = set()
    for node in ast.walk(tree_):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            names.add(node.module.split(".")[0])
    assert names - {"__future__"} <= set(sys.stdlib_module_names), names


# --- unit decisions ----------------------------------------------------------------------------


def u(file_state: str, active: str = "inactive", load: str = "loaded") -> dict[str, str]:
    return {"Id": "x", "LoadState": load, "UnitFileState": file_state, "ActiveState": active}


def test_a_masked_unit_is_masked_again_and_never_merely_disabled() -> None:
    """The disagreement of old: ROLLBACK.sh disabled a masked unit, rollback.yml left it."""
    before = {"a.service": u("masked")}
    now = {"a.service": u("enabled", "active")}
    quiet = restore.units_to_quiet(before, now)
    assert quiet == [["systemctl", "stop", "a.service"], ["systemctl", "disable", "a.service"]]
    after_quiet = {"a.service": u("disabled")}
    assert restore.units_to_restore(before, after_quiet, restart_owed=True) == [
        ["systemctl", "mask", "a.service"]
    ]
    assert restore.units_to_restore(before, {"a.service": u("masked")}, restart_owed=True) == []
    assert restore.units_to_restore(
        {"a.service": u("masked-runtime")}, after_quiet, restart_owed=False
    ) == [["systemctl", "mask", "--runtime", "a.service"]]


def test_a_unit_the_deploy_masked_is_unmasked_and_enabled_again() -> None:
    before = {"a.service": u("enabled", "active")}
    assert restore.units_to_restore(before, {"a.service": u("masked")}, restart_owed=False) == [
        ["systemctl", "unmask", "a.service"],
        ["systemctl", "enable", "a.service"],
        ["systemctl", "restart", "a.service"],
    ]


def test_a_unit_the_deploy_created_is_stopped_and_disabled_before_its_file_goes() -> None:
    before = {"t.timer": u("", load="not-found")}
    now = {"t.timer": u("enabled", "active")}
    assert restore.units_to_quiet(before, now) == [
        ["systemctl", "stop", "t.timer"],
        ["systemctl", "disable", "t.timer"],
    ]
    assert restore.units_to_restore(before, {"t.timer": u("", load="not-found")}, True) == []


def test_running_services_restart_only_when_something_changed() -> None:
    before = {"s.service": u("enabled", "active"), "st.service": u("static", "active")}
    now = {"s.service": u("enabled", "active"), "st.service": u("static", "active")}
    assert restore.units_to_restore(before, now, restart_owed=False) == []
    assert restore.units_to_restore(before, now, restart_owed=True) == [
        ["systemctl", "restart", "s.service"],
        ["systemctl", "restart", "st.service"],
    ]
    # a static unit is never enabled or disabled; a stopped one is started
    stopped = {"s.service": u("enabled", "failed"), "st.service": u("static")}
    assert restore.units_to_restore(before, stopped, restart_owed=False) == [
        ["systemctl", "reset-failed", "s.service"],
        ["systemctl", "restart", "s.service"],
        ["systemctl", "restart", "st.service"],
    ]


def test_disabled_and_inactive_stays_so() -> None:
    before = {"s.service": u("disabled")}
    assert restore.units_to_quiet(before, {"s.service": u("enabled", "active")}) == [
        ["systemctl", "stop", "s.service"],
        ["systemctl", "disable", "s.service"],
    ]
    assert restore.units_to_restore(before, {"s.service": u("disabled")}, True) == []
    assert restore.unit_mismatch(before, {"s.service": u("enabled")}) == [
        "s.service: UnitFileState 'enabled' != recorded 'disabled'"
    ]


def test_a_failure_the_deploy_caused_is_reset_and_one_recorded_before_is_kept() -> None:
    """The live scenario's finding: the kernel's oneshot sweep ended `failed` during a broken
    deploy, while the snapshot recorded it `inactive`; only systemd's reset-failed puts it back.
    A unit that was failed before the deploy is the host's own state: never reset."""
    before = {
        "sweep.service": u("static"),
        "app.service": u("enabled", "active"),
        "broken.service": u("enabled", "failed"),
        "new.service": u("", load="not-found"),
    }
    now = {
        "sweep.service": u("static", "failed"),
        "app.service": u("enabled", "failed"),
        "broken.service": u("enabled", "failed"),
        # its file is gone, but systemd keeps a failed unit in memory until reset
        "new.service": u("", "failed", load="not-found"),
    }
    assert restore.units_to_restore(before, now, restart_owed=False) == [
        ["systemctl", "reset-failed", "sweep.service"],
        # before the restart: a unit that hit its start limit would refuse to start otherwise
        ["systemctl", "reset-failed", "app.service"],
        ["systemctl", "restart", "app.service"],
        ["systemctl", "reset-failed", "new.service"],
    ]
    assert restore.unit_mismatch(before, {**now, "broken.service": u("enabled")}) == [
        "sweep.service: ActiveState 'failed' != recorded 'inactive'",
        "app.service: ActiveState 'failed' != recorded 'active'",
        "broken.service: ActiveState 'inactive' != recorded 'failed'",
    ]


class FakeSystemd:
    """systemctl as restore calls it (through Restore.run), over an in-memory unit table with
    systemd's rules for what each verb does to a unit's ActiveState; every call is recorded."""

    def __init__(self, units: dict[str, dict[str, str]]) -> None:
        self.units = {name: {**props, "Id": name} for name, props in units.items()}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], capture: bool) -> str:
        self.calls.append(argv)
        assert argv[0] == "systemctl", argv
        verb, names = argv[1], [a for a in argv[2:] if not a.startswith("-")]
        if verb == "show":
            keys = argv[argv.index("-p") + 1].split(",")
            names = names[1:]  # the -p value
            return "\n\n".join(
                "\n".join(f"{k}={self.units[n].get(k, '')}" for k in keys) for n in names
            )
        for name in names:
            unit = self.units[name]
            if verb == "stop" or (verb == "reset-failed" and unit["ActiveState"] == "failed"):
                unit["ActiveState"] = "inactive"
            elif verb in {"start", "restart"}:
                unit["ActiveState"] = "active"
            elif verb in {"enable", "disable", "mask"}:
                unit["UnitFileState"] = f"{verb}d" if verb != "mask" else "masked"
            elif verb == "unmask":
                unit["UnitFileState"] = "disabled"
        return ""


def _units_only_restore(
    tmp_path: Path, systemd: FakeSystemd, units: dict[str, dict[str, str]], stamp: str = "1"
) -> dict[str, Any]:
    """A whole restore of an evidence directory that recorded only ``units``."""
    evidence = tmp_path / "evidence" / "core_kernel_20260101T000000Z"
    evidence.mkdir(parents=True, exist_ok=True)
    manifest = restore.parse_manifest(
        {
            "created": "20260101T000000Z",
            "current": {"existed": False, "path": str(tmp_path / "current")},
            "group": {},
            "dirs": {},
            "files": [],
            "units": units,
        }
    )
    with (tmp_path / "log").open("a") as err:
        return restore.Restore(
            evidence=evidence, manifest=manifest, stamp=stamp, run=systemd, log=err
        ).execute()


def test_the_rollback_check_passes_after_a_oneshot_the_deploy_failed(tmp_path: Path) -> None:
    """The whole restore on units only: the check that said "rollback incomplete" for the
    sweep the broken deploy failed now finds the host as recorded; a unit failed before the
    deploy is still failed and still matches; a second run changes nothing."""
    before = {
        "quantum-stream-recover.service": u("static"),
        "quantum-stream-recover.timer": u("enabled", "active"),
        "quantum-legacy.service": u("disabled", "failed"),
    }
    systemd = FakeSystemd({**before, "quantum-stream-recover.service": u("static", "failed")})
    first = _units_only_restore(tmp_path, systemd, before)
    assert first["ok"] is True, first["unit_mismatch"]
    assert first["actions"] == ["reset-failed quantum-stream-recover.service"]
    assert ["systemctl", "reset-failed", "quantum-legacy.service"] not in systemd.calls
    assert systemd.units["quantum-legacy.service"]["ActiveState"] == "failed"
    second = _units_only_restore(tmp_path, systemd, before, stamp="2")
    assert second["ok"] is True and second["changed"] is False, second["actions"]


class TimerFiresSystemd(FakeSystemd):
    """A timer starts its oneshot right after the restore: ``show`` reports it ``activating``
    for ``runs`` reads (``runs`` < 0: for ever), then ``inactive``."""

    def __init__(self, units: dict[str, dict[str, str]], unit: str, runs: int) -> None:
        super().__init__(units)
        self.unit, self.runs = unit, runs

    def __call__(self, argv: list[str], capture: bool) -> str:
        if argv[1] == "show" and self.unit in argv and self.runs != 0:
            self.runs -= 1
            self.units[self.unit]["ActiveState"] = "activating"
        elif argv[1] == "show" and self.unit in argv:
            self.units[self.unit]["ActiveState"] = "inactive"
        return super().__call__(argv, capture)


def _sweep_units() -> dict[str, dict[str, str]]:
    return {
        "quantum-stream-recover.service": u("static"),
        "quantum-stream-recover.timer": u("enabled", "active"),
    }


def test_the_check_waits_for_a_oneshot_the_timer_started_after_the_restore(
    tmp_path: Path,
) -> None:
    """The race the live scenario could hit: the sweep's timer fires between the restore and
    its check. 'activating' where 'inactive' was recorded is the host running: the check waits
    for it to end, then finds the host as recorded."""
    systemd = TimerFiresSystemd(_sweep_units(), "quantum-stream-recover.service", runs=3)
    result = _units_only_restore(tmp_path, systemd, _sweep_units())
    assert result["ok"] is True, result["unit_mismatch"]
    shows = [c for c in systemd.calls if c[1] == "show"]
    assert len(shows) >= 4, shows


def test_a_unit_that_never_leaves_a_transient_state_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is bounded: a unit still 'activating' at the deadline is a mismatch, named."""
    monkeypatch.setattr(restore, "SETTLE_SECONDS", 0.3)
    monkeypatch.setattr(restore, "SETTLE_POLL_SECONDS", 0.05)
    systemd = TimerFiresSystemd(_sweep_units(), "quantum-stream-recover.service", runs=-1)
    started = time.monotonic()
    result = _units_only_restore(tmp_path, systemd, _sweep_units())
    assert time.monotonic() - started < 5
    assert result["ok"] is False
    assert result["unit_mismatch"] == [
        "quantum-stream-recover.service: ActiveState 'activating' != recorded 'inactive'"
    ]
