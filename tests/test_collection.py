"""The repository builds as an Ansible collection (galaxy.yml) and installs like one.

`ansible-galaxy collection build` of the work tree, then `ansible-galaxy collection install -p`
of the tarball into a temporary path; an operator's playbook in a directory of its own (no
roles/, no files/, the repository's roles off the roles path) must resolve the collection's
roles and playbooks by their full names, and the installed roles must carry what they read at
deploy time (the kernel source and pins beside them, their templates, the restore program).
The real deploy from the installed collection onto a lab host is molecule/rollback (its
dependency step builds and installs the tarball the same way; converge deploys from it).

Runs in `make test-controller`:  pytest -p no:cacheprovider -q tests/test_collection.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((PROJECT / "galaxy.yml").read_text(encoding="utf-8"))
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
#: What a built collection must stay under: the kernel source, roles and docs, not a venv.
MAX_TARBALL_BYTES = 2 * 1024 * 1024

OPERATOR_PLAYBOOK = f"""\
---
# An operator's own playbook repository: inventory variables and the collection, nothing else.
- name: Deploy the core trading kernel
  ansible.builtin.import_playbook: {FQCN}.deploy

- name: Roll back (only when asked)
  ansible.builtin.import_playbook: {FQCN}.rollback
  when: rollback | default(false) | bool
"""

#: The same, listing the roles: every filter and module call of the roles must then resolve
#: from the collection itself (ansible-core loads no role-embedded plugins for a collection's
#: roles; nothing sits beside this playbook).
OPERATOR_ROLES_PLAYBOOK = f"""\
---
- name: Deploy the core trading kernel with the collection's roles
  hosts: quantum_kernel
  become: true
  roles:
    - {FQCN}.core_kernel
    - {FQCN}.stream_recovery
    - {FQCN}.kernel_monitoring
"""


def _env(tmp: Path, collections: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_HOME=str(tmp / ".ansible"),
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_ROLES_PATH=str(tmp / "no-roles"),
        ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),  # absent: not the repository's
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(tarball, installed collection root, env) - built and installed once for the module."""
    tmp = tmp_path_factory.mktemp("collection")
    collections = tmp / "collections"
    env = _env(tmp, collections)
    _run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            "--output-path",
            str(tmp),
            str(PROJECT),
        ],
        tmp,
        env,
    )
    tarball = tmp / f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"
    assert tarball.is_file()
    _run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--offline",
            "-p",
            str(collections),
            str(tarball),
        ],
        tmp,
        env,
    )
    root = collections / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    return tarball, root, env


def test_the_tarball_holds_what_a_deploy_reads_and_nothing_of_the_work_tree(
    built: tuple[Path, Path, dict[str, str]],
) -> None:
    tarball, _, _ = built
    assert tarball.stat().st_size < MAX_TARBALL_BYTES
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for needed in (
        "MANIFEST.json",
        "meta/runtime.yml",
        "constraints.txt",
        "files/kernel/pyproject.toml",
        "files/kernel/README.md",
        "files/kernel/src/core_kernel/restore.py",
        "files/kernel/src/core_kernel/lua/admit.lua",
        "roles/core_kernel/templates/ROLLBACK.sh.j2",
        "roles/core_kernel/templates/rollback_report.md.j2",
        "roles/core_kernel/templates/core_gates.env.j2",
        "roles/core_kernel/library/core_kernel_state.py",
        "roles/core_kernel/meta/argument_specs.yml",
        "roles/stream_recovery/tasks/main.yml",
        # role-embedded plugins are not loaded for a collection's roles: the roles call these
        # by their full names (quantum.core_kernel.*)
        "plugins/modules/core_kernel_state.py",
        "plugins/filter/core_kernel.py",
        "plugins/filter/core_kernel_wheelhouse.py",
        "plugins/filter/kernel_monitoring.py",
        "playbooks/deploy.yml",
        "playbooks/rollback.yml",
    ):
        assert needed in names, needed
    for name in names:
        top = name.split("/")[0]
        # collections/ is the work tree's symlink to itself: in a tarball it would be a loop
        assert top not in {
            *(".venv", ".git", "molecule", "tests", "build", "evidence", "scripts", "collections"),
        }, name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
        assert not name.startswith(("files/kernel/tests", "files/kernel/build")), name
        assert not name.startswith("playbooks/lab_"), name


def test_the_installed_collection_is_recognised_with_its_version(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    _, root, env = built
    manifest = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    listed = _run(
        [str(BIN / "ansible-galaxy"), "collection", "list", FQCN, "--format", "json"], tmp_path, env
    )
    found = {name for path in json.loads(listed.stdout).values() for name in path}
    assert FQCN in found


def test_the_roles_find_the_kernel_source_inside_the_collection(
    built: tuple[Path, Path, dict[str, str]],
) -> None:
    """core_kernel_source_dir / _constraints_file are two levels above the role: in the
    installed collection that is the collection's root, which holds files/kernel."""
    _, root, _ = built
    defaults = yaml.safe_load((root / "roles/core_kernel/defaults/main.yml").read_text())
    role = root / "roles/core_kernel"
    for var, rel in (
        ("core_kernel_source_dir", "files/kernel"),
        ("core_kernel_constraints_file", "constraints.txt"),
    ):
        assert defaults[var] == f"{{{{ role_path | dirname | dirname }}}}/{rel}", var
        assert (role.parent.parent / rel).exists(), rel
    assert (role.parent.parent / "files/kernel/src/core_kernel/restore.py").is_file()


FILTER_PLAYBOOK = """\
---
- name: The role's unit filter is restore.py's rule, loaded inside the installed collection
  hosts: localhost
  gather_facts: false
  vars:
    before: {"s.service": {"LoadState": loaded, "UnitFileState": static, "ActiveState": inactive}}
    after: {"s.service": {"LoadState": loaded, "UnitFileState": static, "ActiveState": failed}}
  tasks:
    - name: Compare
      ansible.builtin.assert:
        that:
          - >-
            (before | quantum.core_kernel.core_kernel_unit_mismatch(after))
            == ["s.service: ActiveState 'failed' != recorded 'inactive'"]
          - >-
            (before | quantum.core_kernel.core_kernel_unit_mismatch(after, timers_only_active=true))
            == []
"""


def test_the_unit_filter_runs_restores_rule_from_the_installed_collection(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """core_kernel_unit_mismatch loads files/kernel/src/core_kernel/restore.py by path (review
    D4: one implementation): it must find it in the installed layout too, away from the repo."""
    _, root, env = built
    assert PROJECT not in root.parents
    (tmp_path / "filter.yml").write_text(FILTER_PLAYBOOK)
    proc = _run([str(BIN / "ansible-playbook"), "filter.yml"], tmp_path, env)
    assert "failed=0" in proc.stdout, proc.stdout


def _operator(tmp: Path, playbook: str) -> Path:
    operator = tmp / "operator"
    (operator / "inventory").mkdir(parents=True)
    (operator / "inventory/hosts.yml").write_text(
        "quantum_kernel:\n  hosts:\n    vps1:\n      core_kernel_trading_mode: TESTNET\n"
    )
    (operator / "site.yml").write_text(playbook)
    assert len(playbook.strip().splitlines()) <= 10
    return operator


@pytest.mark.parametrize("playbook", [OPERATOR_PLAYBOOK, OPERATOR_ROLES_PLAYBOOK])
def test_an_operators_playbook_resolves_everything_from_the_collection(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path, playbook: str
) -> None:
    _, _, env = built
    operator = _operator(tmp_path, playbook)
    proc = _run(
        [str(BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "--syntax-check", "site.yml"],
        operator,
        env,
    )
    assert "playbook: site.yml" in proc.stdout


def test_an_operators_roles_play_lists_the_whole_deploy_sequence(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """--list-tasks expands the roles' static imports: core_kernel's sequence with
    stream_recovery and kernel_monitoring inside it, then the two roles' own entries."""
    _, _, env = built
    operator = _operator(tmp_path, OPERATOR_ROLES_PLAYBOOK)
    proc = _run(
        [str(BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "--list-tasks", "site.yml"],
        operator,
        env,
    )
    for role in ("core_kernel", "stream_recovery", "kernel_monitoring"):
        assert f"{role} : " in proc.stdout, role
    assert "Preflight" in proc.stdout and "Already applied in this run" in proc.stdout


def test_the_role_documents_its_options_from_the_collection(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    _, _, env = built
    proc = _run(
        [str(BIN / "ansible-doc"), "-t", "role", "-j", f"{FQCN}.core_kernel"], tmp_path, env
    )
    doc = json.loads(proc.stdout)[f"{FQCN}.core_kernel"]
    options = doc["entry_points"]["main"]["options"]
    assert options["core_kernel_min_notional_usd"]["default"] == 25
    assert "rollback" in doc["entry_points"]


# --- the collection's rollback tasks, on this machine -------------------------------------------

ROLLBACK_PLAY = f"""\
- name: The collection's rollback tasks against an evidence directory of this machine
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Roll back
      ansible.builtin.import_role:
        name: {FQCN}.core_kernel
        tasks_from: rollback.yml
"""


def _evidence(tmp: Path, with_program: bool) -> tuple[Path, Path, Path]:
    """A host tree with one file the deploy changed and one it created, and the evidence a
    deploy would have written for it (files only: units are molecule/rollback's, on systemd)."""
    hostroot = tmp / "host"
    env_file = hostroot / "etc/core_gates.env"
    created = hostroot / "bin/quantum_stream_recover.sh"
    env_file.parent.mkdir(parents=True)
    created.parent.mkdir(parents=True)
    before = b"MIN_NOTIONAL_USD=25\n"
    env_file.write_bytes(b"MIN_NOTIONAL_USD=99\n")
    created.write_text("#!/bin/sh\n")
    evidence = tmp / "evidence/core_kernel_20260101T000000Z"
    backup = evidence / "backup"
    (backup / str(env_file).lstrip("/")).parent.mkdir(parents=True)
    (backup / str(env_file).lstrip("/")).write_bytes(before)
    for d in (tmp / "evidence", evidence, backup):
        d.chmod(0o700)
    manifest = {
        "created": "20260101T000000Z",
        "host": "localhost",
        "release_new": "r2",
        "current": {"existed": False, "target": ""},
        "group": {"name": "", "existed_before_run": True, "members": [], "members_before": []},
        "files": [
            {
                "path": str(env_file),
                "existed": True,
                "type": "file",
                "sha256": hashlib.sha256(before).hexdigest(),
                "owner": "root",
                "group": "root",
                "mode": "0640",
                "link_target": "",
                "backup": str(env_file).lstrip("/"),
            },
            {"path": str(created), "existed": False},
        ],
        "dirs": {str(env_file.parent): True, str(created.parent): True},
        "owned_dirs": {},
        "users": {},
        "units": {},
    }
    (backup / "manifest.json").write_text(json.dumps(manifest))
    (backup / "manifest.json").chmod(0o600)
    if with_program:
        program = PROJECT / "files/kernel/src/core_kernel/restore.py"
        (evidence / "restore.py").write_bytes(program.read_bytes())
    return evidence, env_file, created


def _rollback(
    built: tuple[Path, Path, dict[str, str]], tmp: Path, evidence: Path, *extra: str
) -> str:
    _, _, env = built
    play = tmp / "rollback.yml"
    play.write_text(ROLLBACK_PLAY)
    proc = _run(
        [
            str(BIN / "ansible-playbook"),
            *("-i", "localhost,", "-c", "local", *extra),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
            *("-e", "core_kernel_trading_mode=TESTNET core_kernel_python=/usr/bin/python3"),
            *("-e", f"core_kernel_rollback_evidence={evidence}"),
            *("-e", f"core_kernel_base_dir={tmp / 'opt'}"),
            str(play),
        ],
        tmp,
        env,
    )
    return proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the restore sets owners: run as root (CI is)")
def test_the_collections_rollback_runs_restore_and_honours_check(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """rollback.yml from the installed collection runs the evidence's restore.py: under --check
    it only lists (restore --dry-run), then it restores and reports, and a second run changes
    nothing."""
    evidence, env_file, created = _evidence(tmp_path, with_program=True)

    out = _rollback(built, tmp_path, evidence, "--check")
    assert env_file.read_bytes() == b"MIN_NOTIONAL_USD=99\n" and created.exists()
    assert f"restore {env_file} (root:root 0640)" in out
    assert not list(evidence.glob("rollback_*")) and not list(evidence.glob("ROLLBACK_REPORT_*"))

    _rollback(built, tmp_path, evidence)
    assert env_file.read_bytes() == b"MIN_NOTIONAL_USD=25\n"
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    assert not created.exists()
    reports = list(evidence.glob("ROLLBACK_REPORT_*.md"))
    assert len(reports) == 1 and "**OK**" in reports[0].read_text()
    assert f"remove {created} (did not exist before)" in reports[0].read_text()

    out = _rollback(built, tmp_path, evidence)
    assert "failed=0" in out[out.rindex("PLAY RECAP") :]
    latest = max(evidence.glob("rollback_*/result.json"), key=lambda p: p.parent.name)
    assert json.loads(latest.read_text())["changed"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="the restore sets owners: run as root (CI is)")
def test_older_evidence_without_restore_py_is_restored_by_the_roles_copy(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    evidence, env_file, created = _evidence(tmp_path, with_program=False)
    _rollback(built, tmp_path, evidence)
    assert env_file.read_bytes() == b"MIN_NOTIONAL_USD=25\n"
    assert not created.exists()
    assert not (evidence / "restore.py").exists()  # nothing added to the evidence
    assert "**OK**" in next(evidence.glob("ROLLBACK_REPORT_*.md")).read_text()


# --- the roles' filters and module, by their full names ------------------------------------------


def _plugin_names() -> tuple[set[str], set[str]]:
    """(filter names, module names) the collection provides (plugins/), read from the files."""
    filters: set[str] = set()
    for plugin in (PROJECT / "plugins/filter").glob("*.py"):
        spec = importlib.util.spec_from_file_location(f"_collection_{plugin.stem}", plugin)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        filters |= set(module.FilterModule().filters())
    modules = {p.stem for p in (PROJECT / "plugins/modules").glob("*.py")}
    return filters, modules


def test_every_role_plugin_is_the_collections_by_the_same_file() -> None:
    """One implementation: plugins/ is where a collection's roles find them; each is the role's
    own file (roles/*/filter_plugins, roles/*/library), linked, not a copy that could drift."""
    filters, modules = _plugin_names()
    assert len(filters) >= 15 and modules == {"core_kernel_state", "core_kernel_evidence"}
    for kind, pattern in (
        ("filter", "roles/*/filter_plugins/*.py"),
        ("modules", "roles/*/library/*.py"),
    ):
        for own in PROJECT.glob(pattern):
            exposed = PROJECT / "plugins" / kind / own.name
            assert exposed.is_symlink() and exposed.resolve() == own.resolve(), exposed
    assert not (PROJECT / "playbooks/filter_plugins").exists()


def test_the_roles_and_playbooks_call_filters_and_module_by_full_name() -> None:
    """A short name works from this work tree's roles/ (their embedded plugins load) and fails
    only from the installed collection: so none is allowed anywhere a role or playbook reads."""
    filters, modules = _plugin_names()
    names = "|".join(sorted(filters | modules))
    short = re.compile(rf"(?<![\w.])({names})\b")
    found = []
    for path in sorted(
        {*PROJECT.glob("roles/*/**/*.yml"), *PROJECT.glob("roles/*/**/*.j2")}
        | {*PROJECT.glob("playbooks/**/*.yml"), *PROJECT.glob("molecule/**/*.yml")}
    ):
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{path.relative_to(PROJECT)}:{no}: {m}" for m in short.findall(line)]
    assert found == []
    # and the check can find one: a short call is caught
    assert short.findall('x: "{{ a | core_kernel_props }}"') == ["core_kernel_props"]


class _Metrics(BaseHTTPRequestHandler):
    BODY = b'# TYPE quantum_kernel_admits counter\nquantum_kernel_admits_total{verdict="PASS"} 3\n'

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *_: object) -> None:
        pass


FILTERS_PLAY = f"""\
- name: The collection's roles run their filter and module calls on this machine
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Wheelhouse target (core_kernel_wheel_target)
      ansible.builtin.include_role:
        name: {FQCN}.core_kernel
        tasks_from: wheelhouse_target.yml
    - name: Snapshot the file as a deploy's before state
      {FQCN}.core_kernel_state:
        paths: ["{{{{ watched }}}}"]
      register: before
    - name: Late evidence (core_kernel_state, core_kernel_restore_check, core_kernel_unit_mismatch)
      ansible.builtin.include_role:
        name: {FQCN}.core_kernel
        tasks_from: late_evidence.yml
      vars:
        _core_kernel_all_files: ["{{{{ watched }}}}"]
        _core_kernel_all_units: []
        _core_kernel_manifest: {{files: "{{{{ before.files }}}}"}}
        _core_kernel_units_before: {{}}
    - name: Monitoring evidence (every kernel_monitoring filter)
      ansible.builtin.include_role:
        name: {FQCN}.kernel_monitoring
        tasks_from: evidence.yml
    - name: Keep what the core_kernel filters gave
      ansible.builtin.copy:
        dest: "{{{{ out }}}}"
        content: "{{{{ {{'target': _core_kernel_target, 'late': _core_kernel_late_changes}}
                   | to_json }}}}"
        mode: "0600"
"""


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the evidence file is written root-owned (CI is root)"
)
def test_the_collections_roles_run_their_filters_from_the_installed_collection(
    built: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """Filters resolve when a task runs, not at --syntax-check: run task files of the installed
    roles that call them (and the module) against this machine, read-only but for tmp_path, and
    check what the filters computed."""
    _, _, env = built
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watched, textfile = tmp_path / "watched.env", tmp_path / "kernel.prom"
    watched.write_text("MIN_NOTIONAL_USD=25\n")
    textfile.write_text("quantum_kernel_sweep_last_success_timestamp_seconds 1.7e+09\n")
    evidence, out = tmp_path / "monitoring.json", tmp_path / "out.json"
    extra = {
        "ansible_python_interpreter": sys.executable,
        "core_kernel_python": sys.executable,
        "core_kernel_trading_mode": "TESTNET",
        "watched": str(watched),
        "out": str(out),
        "core_kernel_worker_metrics_listen": f"127.0.0.1:{server.server_port}",
        "kernel_monitoring_scrape_router": False,
        "kernel_monitoring_textfile_source": str(textfile),
        "kernel_monitoring_textfile_link_dir": "",
        "kernel_monitoring_prometheus_manage": False,
        "kernel_monitoring_evidence_file": str(evidence),
    }
    play = tmp_path / "filters.yml"
    play.write_text(FILTERS_PLAY)
    try:
        _run(
            [
                str(BIN / "ansible-playbook"),
                *("-i", "localhost,", "-c", "local", "-e", json.dumps(extra)),
                str(play),
            ],
            tmp_path,
            env,
        )
    finally:
        server.shutdown()
    core = json.loads(out.read_text())
    assert core["target"]["ok"] is True and core["late"] == []
    mon = json.loads(evidence.read_text())
    assert mon["kernel_endpoints"] == [
        {
            "name": "execution worker",
            "url": f"http://127.0.0.1:{server.server_port}/metrics",
            "answers": True,
            "status": 200,
        }
    ]
    assert mon["kernel_metrics"] == {'quantum_kernel_admits_total{verdict="PASS"}': 3.0}
    assert mon["textfile"]["samples"] == {
        "quantum_kernel_sweep_last_success_timestamp_seconds": 1.7e9
    }
    assert mon["rules"]["alerts"] and all(a["alert"] for a in mon["rules"]["alerts"])
