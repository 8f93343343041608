"""The wheelhouse fits the host (issue 12 item 7).

No container: a tiny playbook runs only the role's wheelhouse tasks (tasks/wheelhouse.yml)
against inventory hosts that are all this machine (connection local), each made to look like
another host - its architecture fact overridden, or a stand-in core_kernel_python that answers
the probe as an old or a musl Python would. The wheels come from the package index into a
temporary directory (pip's cache too), built for aarch64 and for x86_64 whatever this machine is.

It runs in `make test-controller` (part of make test, beside the kernel's pytest) and alone:
    pytest -p no:cacheprovider tests/test_wheelhouse.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "molecule"))
from controller import ansible_playbook  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "core_kernel_wheelhouse",
    PROJECT / "roles/core_kernel/filter_plugins/core_kernel_wheelhouse.py",
)
assert _spec and _spec.loader
wh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wh)

PLAYBOOK = """\
- name: Build the wheelhouses of hosts that are this machine in disguise
  hosts: all
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: Look like the host under test (the role reads ansible_facts)
      ansible.builtin.set_fact:
        architecture: "{{ test_architecture | default(ansible_facts.architecture) }}"
        system: "{{ test_system | default(ansible_facts.system) }}"
        cacheable: true

    - name: The role's wheelhouse tasks only
      ansible.builtin.import_role:
        name: core_kernel
        tasks_from: wheelhouse.yml
"""


def probe_answer(version: str, libc: str, machine: str = "x86_64") -> str:
    """What the role's probe prints on such a host (tasks/wheelhouse_target.yml)."""
    major, minor = version.split(".")[:2]
    env = {
        "implementation_name": "cpython",
        "implementation_version": version,
        "os_name": "posix",
        "platform_machine": machine,
        "platform_release": "6.1.0",
        "platform_version": "#1 SMP",
        "platform_system": "Linux",
        "python_full_version": version,
        "platform_python_implementation": "CPython",
        "python_version": f"{major}.{minor}",
        "sys_platform": "linux",
    }
    return json.dumps({"env": env, "libc": libc, "bits": 64, "free_threaded": False})


def stand_in_python(path: Path, answer: str) -> str:
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\n")
    path.chmod(0o755)
    return str(path)


# Hosts that must be served; arm1 and arm2 share one target, so one build.
SERVED = {"arm1": "aarch64", "arm2": "aarch64", "amd1": "x86_64"}
# Hosts that must be refused in one line, before anything is built for them.
REFUSED = {
    "py39": "is Python 3.9.18; the kernel needs requires-python >=3.11",
    "alpine": "C library is musl, not glibc",
    "bsd": "the host runs FreeBSD, not Linux",
    "armv6": "architecture armv6l has no manylinux wheels",
    # A real platform with manylinux wheels, where one pinned dependency has none.
    "armv7": "no wheel of pycryptodome==",
}


def run(tmp: Path, *extra: str) -> tuple[dict, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_HOME=os.environ.get("ANSIBLE_HOME", str(PROJECT / ".ansible")),
        PIP_CACHE_DIR=str(tmp / "pip-cache"),
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    cmd = [ansible_playbook(), "-i", str(tmp / "hosts.yml"), str(tmp / "play.yml"), *extra]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    took = time.monotonic() - start
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"ansible-playbook gave no JSON (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return out, took


def failures(out: dict) -> dict[str, list[str]]:
    """host -> the msg of each task that failed on it."""
    failed: dict[str, list[str]] = {}
    for play in out["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if result.get("failed") and not result.get("skipped"):
                    failed.setdefault(host, []).append(str(result.get("msg", "")))
    return failed


def changed_tasks(out: dict, host: str) -> list[str]:
    return [
        task["task"]["name"]
        for play in out["plays"]
        for task in play["tasks"]
        if task["hosts"].get(host, {}).get("changed")
    ]


def distributions(wheelhouse: Path) -> set[tuple[str, str]]:
    found = set()
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found.add((str(name), str(version)))
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The playbook run twice: first in --check (the controller-side build must still happen),
    then for real without armv7 (nothing may change). Returns (first output, second output,
    build dir)."""
    tmp = tmp_path_factory.mktemp("wheelhouse")
    kernel = tmp / "kernel"  # a copy: setuptools writes build/ and egg-info beside the sources
    shutil.copytree(
        PROJECT / "files/kernel",
        kernel,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests", "bench"),
    )
    real = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {name: {"test_architecture": arch} for name, arch in SERVED.items()}
    hosts["py39"] = {
        "core_kernel_python": stand_in_python(
            tmp / "python3.9", probe_answer("3.9.18", "glibc 2.31")
        )
    }
    hosts["alpine"] = {
        "core_kernel_python": stand_in_python(tmp / "python-musl", probe_answer("3.11.9", "musl"))
    }
    hosts["bsd"] = {"test_system": "FreeBSD"}
    hosts["armv6"] = {"test_architecture": "armv6l"}
    hosts["armv7"] = {"test_architecture": "armv7l"}
    inventory = {
        "all": {
            "hosts": hosts,
            "vars": {
                **real,
                "core_kernel_trading_mode": "TESTNET",
                "core_kernel_python": sys.executable,
                "core_kernel_controller_python": sys.executable,
                "core_kernel_source_dir": str(kernel),
                "core_kernel_constraints_file": str(PROJECT / "constraints.txt"),
                "core_kernel_build_dir": str(tmp / "wheelhouse"),
            },
        }
    }
    (tmp / "hosts.yml").write_text(json.dumps(inventory, indent=2))
    (tmp / "play.yml").write_text(PLAYBOOK)
    first, took1 = run(tmp, "--check")
    # armv7's target is tried again on every run (it may get its wheel one day): left out here.
    second, took2 = run(tmp, "--limit", "all:!armv7")
    for name, out in (("check-run", first), ("second-run", second)):
        (tmp / f"{name}.json").write_text(json.dumps(out, indent=1))  # to read when one fails
    print(f"wheelhouse playbook: --check run {took1:.1f} s (builds), second run {took2:.1f} s")
    return first, second, tmp / "wheelhouse"


def published(build_dir: Path) -> dict[str, Path]:
    """target -> published wheelhouse (<hash12>-<target>; not .partial, .tar or the kernel's)."""
    return {
        p.name.split("-", 1)[1]: p
        for p in build_dir.iterdir()
        if p.is_dir() and ".partial" not in p.name and not p.name.endswith("-kernel")
    }


def test_each_target_is_built_once_for_its_own_platform(built):
    first, _, build_dir = built
    targets = published(build_dir)
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[1].replace(".", "_")
    assert set(targets) == {f"cp311-manylinux_{glibc}_aarch64", f"cp311-manylinux_{glibc}_x86_64"}
    # One hash for both (the release name does not depend on the target), and an archive each.
    assert len({p.name.split("-", 1)[0] for p in targets.values()}) == 1
    for path in targets.values():
        assert Path(f"{path}.tar").is_file()
    assert not failures(first).keys() & SERVED.keys(), failures(first)


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_a_wheelhouse_holds_only_its_platforms_wheels_or_pure_ones(built, machine):
    _, _, build_dir = built
    (wheelhouse,) = [p for t, p in published(build_dir).items() if t.endswith(f"_{machine}")]
    wheels = sorted(wheelhouse.glob("*.whl"))
    assert len(wheels) > 20
    binary = 0
    for wheel in wheels:
        _, _, _, tags = parse_wheel_filename(wheel.name)
        for tag in tags:
            assert tag.platform == "any" or tag.platform.endswith(f"_{machine}"), wheel.name
            assert tag.platform == "any" or tag.platform.startswith("manylinux"), wheel.name
        # and it is for CPython 3.11: pure py3, cp311, or the stable ABI of an older cp3
        assert any(
            tag.interpreter == "py3"
            or (tag.interpreter == "cp311" and tag.abi in ("cp311", "abi3", "none"))
            or (tag.interpreter.startswith("cp3") and tag.abi == "abi3")
            for tag in tags
        ), wheel.name
        binary += all(tag.platform != "any" for tag in tags)
    # pydantic-core, hiredis, aiohttp, ...: the compiled ones are really there, for this machine.
    assert binary >= 5, [w.name for w in wheels]
    assert any(w.name.startswith(("pydantic_core-", "hiredis-")) for w in wheels)


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_a_wheelhouse_installs_offline_on_its_platform(built, machine, tmp_path):
    # What the host's `pip install --no-index --find-links <wheelhouse>` will do, resolved here
    # for that host's platform: every dependency is in the wheelhouse, nothing else is needed.
    _, _, build_dir = built
    (wheelhouse,) = [p for t, p in published(build_dir).items() if t.endswith(f"_{machine}")]
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    version = re.search(
        r'^version\s*=\s*"([^"]+)"', (PROJECT / "files/kernel/pyproject.toml").read_text(), re.M
    ).group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, find-links or constraints of this machine
    report = tmp_path / "report.json"
    tags = [f"--platform={t}" for t in wh.core_kernel_manylinux_tags(glibc, machine)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check",
         "--no-index", "--find-links", str(wheelhouse), "--only-binary=:all:",
         "--target", str(tmp_path / "target"), "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", *tags, "--report", str(report),
         f"quantum-core-kernel=={version}"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = json.loads(report.read_text())["install"]
    chosen = {(i["metadata"]["name"], i["metadata"]["version"]) for i in installs}
    assert {(str(canonicalize_name(n)), v) for n, v in chosen} <= distributions(wheelhouse)
    assert len(chosen) >= 20
    for item in installs:
        assert item["download_info"]["url"].startswith(f"file://{wheelhouse}/"), item


def test_both_platforms_get_the_same_distributions(built):
    _, _, build_dir = built
    arm, amd = (
        distributions(p)
        for _, p in sorted(published(build_dir).items(), key=lambda kv: "x86_64" in kv[0])
    )
    assert arm == amd
    names = {name for name, _ in arm}
    # the kernel, the pinned dependencies and the extra wheel (async-timeout, for Python < 3.11.3)
    assert {"quantum-core-kernel", "pydantic-core", "hiredis", "async-timeout"} <= names
    pins = {
        canonicalize_name(line.split("==")[0]): line.split("==")[1].strip()
        for line in (PROJECT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for name, version in arm:
        if name in pins:
            assert pins[name] == version, name


@pytest.mark.parametrize("host", sorted(REFUSED))
def test_an_unservable_host_is_refused_in_one_line(built, host):
    first, second, _ = built
    for out in (first, second) if host != "armv7" else (first,):
        msgs = failures(out).get(host)
        assert msgs and len(msgs) == 1, failures(out)
        (msg,) = msgs
        assert msg.startswith(f"wheelhouse refused on {host}: "), msg
        assert REFUSED[host] in msg, msg
        assert "\n" not in msg and "Traceback" not in msg and len(msg) < 400, msg
        # refused before anything was built or changed for it
        assert changed_tasks(out, host) == [], changed_tasks(out, host)


def test_second_run_changes_nothing(built):
    first, second, _ = built
    assert any(changed_tasks(first, h) for h in SERVED), "the --check run built nothing"
    for host in SERVED:
        assert changed_tasks(second, host) == [], (host, changed_tasks(second, host))
        assert second["stats"][host]["failures"] == 0
        assert second["stats"][host]["changed"] == 0


# --- the filters themselves -------------------------------------------------------------------


def test_platform_tags_are_expanded_down_to_the_oldest_manylinux():
    arm = wh.core_kernel_manylinux_tags("2.36", "aarch64")
    assert arm[0] == "manylinux_2_36_aarch64"
    assert arm[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert len(arm) == 36 - 17 + 1 + 1
    amd = wh.core_kernel_manylinux_tags("2.31", "x86_64")
    assert amd[-1] == "manylinux1_x86_64"
    for legacy, at in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        assert amd.index(f"{legacy}_x86_64") == amd.index(f"manylinux_2_{at}_x86_64") + 1
    assert wh.core_kernel_manylinux_tags("2.12", "aarch64") == []


def target(answer: str, system="Linux", machine="x86_64", platforms=None) -> dict:
    probe = {"rc": 0, "stdout": answer, "stderr": ""}
    return wh.core_kernel_wheel_target(
        probe, system, machine, ">=3.11", "/usr/bin/python3", platforms or []
    )


def test_the_target_comes_from_the_hosts_python_libc_and_architecture():
    t = target(probe_answer("3.11.2", "glibc 2.36"), machine="aarch64")
    assert t["ok"] and t["key"] == "cp311-manylinux_2_36_aarch64"
    assert t["build"]["python"] == "3.11" and t["build"]["abi"] == "cp311"
    t = target(probe_answer("3.12.3", "glibc 2.39"), machine="x86_64")
    assert t["key"] == "cp312-manylinux_2_39_x86_64"
    # Ansible names 32-bit x86 i386; a 32-bit Python on a 64-bit kernel takes 32-bit wheels.
    assert target(probe_answer("3.11.2", "glibc 2.36"), machine="i386")["machine"] == "i686"
    bits32 = json.loads(probe_answer("3.11.2", "glibc 2.36"))
    bits32["bits"] = 32
    assert target(json.dumps(bits32), machine="aarch64")["machine"] == "armv7l"
    # an override is used as given and is a wheelhouse of its own
    t = target(probe_answer("3.11.2", "musl"), platforms=["musllinux_1_2_x86_64"])
    assert t["ok"] and t["build"]["platforms"] == ["musllinux_1_2_x86_64"]
    assert t["key"].startswith("cp311-musllinux_1_2_x86_64-")


@pytest.mark.parametrize(
    ("answer", "kwargs", "reason"),
    [
        (probe_answer("3.10.12", "glibc 2.35"), {}, "is Python 3.10.12; the kernel needs"),
        (probe_answer("3.11.2", ""), {}, "no glibc found, not glibc"),
        (probe_answer("3.11.2", "glibc 2.12"), {"machine": "aarch64"}, "older than the oldest"),
        (probe_answer("3.11.2", "glibc 2.36"), {"machine": "mips"}, "architecture mips has no"),
        (probe_answer("3.11.2", "glibc 2.36"), {"system": "Darwin"}, "runs Darwin, not Linux"),
        ("Traceback (most recent call last):", {}, "gave no usable answer"),
    ],
)
def test_the_target_refusals(answer, kwargs, reason):
    t = target(answer, **kwargs)
    assert not t["ok"] and reason in t["reason"], t
    assert "\n" not in t["reason"]
    pypy = json.loads(probe_answer("3.11.2", "glibc 2.36"))
    pypy["env"]["implementation_name"] = "pypy"
    assert "not CPython" in target(json.dumps(pypy))["reason"]
    missing = wh.core_kernel_wheel_target(
        {"rc": 2, "stdout": "", "stderr": "python3.11: not found"},
        "Linux",
        "x86_64",
        ">=3.11",
        "/opt/py/bin/python3.11",
        [],
    )
    assert (
        missing["reason"]
        == "/opt/py/bin/python3.11 did not run on the host (rc=2: python3.11: not found)"
    )


# pip 23.2's output (stdout + stderr) for an armv7l target: pycryptodome has no armv7l wheel.
PIP_CONFLICT = "\n".join(
    [
        "Collecting websockets (from python-binance<1.1,>=1.0.37->quantum-core-kernel==0.1.0)",
        "INFO: pip is looking at multiple versions of python-binance to determine which version"
        " is compatible with other requirements. This could take a while.",
        "",
        "The conflict is caused by:",
        "    python-binance 1.0.37 depends on pycryptodome",
        "    The user requested (constraint) pycryptodome==4.4.0",
        "",
        "To fix this you could try to:",
        "1. loosen the range of package versions you've specified",
        "2. remove package versions to allow pip attempt to solve the dependency conflict",
        "",
        "ERROR: Cannot install quantum-core-kernel because these package versions have"
        " conflicting dependencies.",
        "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"
        "dependency-resolution/#dealing-with-dependency-conflicts",
    ]
)


def test_pips_failure_becomes_one_line_naming_the_package():
    key = "cp311-manylinux_2_36_armv7l"
    assert wh.core_kernel_pip_refusal(PIP_CONFLICT, key) == (
        "no wheel of pycryptodome==4.4.0 (needed by python-binance 1.0.37) fits " + key
    )
    unpinned = (
        "ERROR: Could not find a version that satisfies the requirement pycryptodome "
        "(from python-binance) (from versions: none)\n"
        "ERROR: No matching distribution found for pycryptodome\n"
    )
    assert wh.core_kernel_pip_refusal(unpinned, key) == (
        "no wheel of pycryptodome (needed by python-binance) fits " + key
    )
    # a pin the requirement itself excludes is a conflict, not a missing wheel
    real_conflict = PIP_CONFLICT.replace("depends on pycryptodome", "depends on pycryptodome>=5")
    assert wh.core_kernel_pip_refusal(real_conflict, key).startswith("the pins conflict for")
    offline = (
        "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) "
        "after connection broken by 'NewConnectionError(...: Failed to establish a new "
        "connection: [Errno 101] Network is unreachable')': /simple/redis/\n" + unpinned
    )
    assert wh.core_kernel_pip_refusal(offline, key).startswith(
        "the package index is unreachable from the controller"
    )


def test_a_dependency_only_the_hosts_python_needs_is_caught(built, tmp_path):
    # redis wants async-timeout on Python < 3.11.3 (Debian 12 has 3.11.2); a controller on a
    # later 3.11 leaves it out. Without core_kernel_extra_wheels the host is refused by name.
    _, _, build_dir = built
    (wheelhouse,) = [p for t, p in published(build_dir).items() if t.endswith("_x86_64")]
    lacking = tmp_path / "lacking"
    shutil.copytree(wheelhouse, lacking, ignore=shutil.ignore_patterns("async_timeout-*"))
    debian12 = json.loads(probe_answer("3.11.2", "glibc 2.36"))["env"]
    later = json.loads(probe_answer("3.11.9", "glibc 2.36"))["env"]
    assert wh.core_kernel_wheel_gaps(str(wheelhouse), debian12, "quantum-core-kernel") == []
    assert wh.core_kernel_wheel_gaps(str(lacking), later, "quantum-core-kernel") == []
    (gap,) = wh.core_kernel_wheel_gaps(str(lacking), debian12, "quantum-core-kernel")
    assert gap.startswith("async-timeout>=4.0.3 (from redis "), gap
    assert "python_full_version < " in gap


def test_the_wheelhouse_metadata_carries_no_marker_that_differs_by_platform(built):
    # What pip evaluated for the controller: no dependency of the kernel depends on the machine
    # or libc, so the aarch64 and x86_64 sets agree (test above) and the only marker that
    # differs between hosts is the Python version (covered by core_kernel_extra_wheels + gaps).
    _, _, build_dir = built
    (wheelhouse,) = [p for t, p in published(build_dir).items() if t.endswith("_aarch64")]
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            parsed = Parser().parsestr(archive.read(meta).decode())
        for req in parsed.get_all("Requires-Dist") or []:
            marker = req.partition(";")[2]
            if "extra ==" in marker.replace("'", '"') or not marker:
                continue
            assert "platform_machine" not in marker, (wheel.name, req)


def test_concurrent_builds_of_one_target_all_succeed_and_publish_one_wheelhouse(built):
    """Two Molecule lanes (or two terminals) deploying at once build the same target into one
    build directory: every run must end with the same complete wheelhouse, none half-published,
    no partial left behind."""
    _, _, build_dir = built
    tmp = build_dir.parent
    shared = tmp / "concurrent"
    with ThreadPoolExecutor(max_workers=6) as pool:
        outs = list(
            pool.map(
                lambda _: run(tmp, "--limit", "arm1", "-e", f"core_kernel_build_dir={shared}")[0],
                range(6),
            )
        )
    for out in outs:
        assert failures(out) == {}, failures(out)
    got = published(shared)
    assert sorted(got) == [next(k for k in published(build_dir) if "aarch64" in k)]
    (only,) = got.values()
    assert distributions(only) == distributions(published(build_dir)[only.name.split("-", 1)[1]])
    assert not [p.name for p in shared.iterdir() if ".partial" in p.name]
