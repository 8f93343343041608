"""Run a project playbook from the controller against a Molecule instance, from its tests.

The scenarios' own converge goes through Molecule; a test that must prove what an operator's
command does (a refused LIVE deploy, a halt across the inventory) runs the real playbook with
the real inventory's group_vars instead, through the podman connection. Tests add this
directory to sys.path to import it (scenario test dirs are not packages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def ansible_playbook() -> str:
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    assert found, "ansible-playbook not found next to the test interpreter or on PATH"
    return found


def _command(
    tmp_path: Path, instance: str, inventory: str, playbook: str, extra: tuple[str, ...]
) -> tuple[list[str], dict[str, str]]:
    inv = tmp_path / f"{inventory}-{playbook.removesuffix('.yml')}"
    inv.mkdir(exist_ok=True)
    if not (inv / "group_vars").exists():
        (inv / "group_vars").symlink_to(PROJECT / "inventory" / inventory / "group_vars")
    (inv / "hosts.yml").write_text(
        "quantum_kernel:\n"
        "  hosts:\n"
        f"    {instance}:\n"
        # the pipelined podman connection the scenarios use (scripts/lab/connection_plugins)
        "      ansible_connection: lab_podman\n"
        "      ansible_python_interpreter: /usr/bin/python3\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(PROJECT / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return [ansible_playbook(), "-i", str(inv), f"playbooks/{playbook}", *extra], env


def run_playbook(
    tmp_path: Path, instance: str, inventory: str, playbook: str, *extra: str
) -> tuple[int, str, float]:
    """playbooks/<playbook> against the instance with inventory/<inventory>/group_vars only.

    Returns (exit code, stdout + stderr, seconds).
    """
    cmd, env = _command(tmp_path, instance, inventory, playbook, extra)
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def start_playbook(
    tmp_path: Path, instance: str, inventory: str, playbook: str, *extra: str
) -> subprocess.Popen[bytes]:
    """The same run in the background, in its own process group (so a test can kill all of it,
    as a dropped SSH link or Ctrl-C would)."""
    cmd, env = _command(tmp_path, instance, inventory, playbook, extra)
    return subprocess.Popen(
        cmd,
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# --- an operator's own inventory (the ssh scenario) -----------------------------------------------


def operator_env() -> dict[str, str]:
    """The controller environment an operator's shell would give ansible-playbook: none of the
    test runner's ANSIBLE_* settings, the project's ansible.cfg, the venv's tools first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(PROJECT / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def operator_command(inventory: Path, playbook: str, *extra: str) -> list[str]:
    return [ansible_playbook(), "-i", str(inventory), f"playbooks/{playbook}", *extra]


def run_operator_playbook(
    inventory: Path, playbook: str, *extra: str, answer: str | None = None
) -> tuple[int, str, float]:
    """playbooks/<playbook> with an inventory directory as an operator has it (its own
    connection settings, group_vars, host_vars). Returns (exit code, stdout + stderr, seconds).

    ``answer``: what the operator types at ansible-playbook's prompts (-K), one line each. The
    run gets its own session, so it has no terminal to prompt on and reads them from stdin."""
    start = time.monotonic()
    proc = subprocess.run(
        operator_command(inventory, playbook, *extra),
        cwd=PROJECT,
        env=operator_env(),
        input=answer,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
        start_new_session=answer is not None,
    )
    return proc.returncode, proc.stdout, time.monotonic() - start


def start_operator_playbook(
    inventory: Path, playbook: str, *extra: str, output: Path | None = None
) -> subprocess.Popen[bytes]:
    """The same run in the background, in its own process group (so a test can kill all of it,
    as Ctrl-C or a dropped link would); its output goes to `output` when given."""
    sink = open(output, "wb") if output else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            operator_command(inventory, playbook, *extra),
            cwd=PROJECT,
            env=operator_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if output:
            sink.close()  # type: ignore[union-attr]
