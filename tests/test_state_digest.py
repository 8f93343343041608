"""The no-op fast path's state digest (roles/core_kernel/filter_plugins: core_kernel_state_digest).

A deploy with unchanged inputs skips its work only while the host's digest equals the one the
last proven deploy recorded (roles/core_kernel/tasks/unchanged.yml): every difference a full run
would put right must change the digest, and nothing that comes and goes by itself may.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]


def load(name: str, path: str):
    """A plugin or the restore program, by path (neither is an importable package here)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


_filters = load("_digest_filter", "roles/core_kernel/filter_plugins/core_kernel.py")
digest = _filters.core_kernel_state_digest

VOLATILE = ["quantum-stream-recover.service"]


def unit(active: str, enabled: str = "enabled", load: str = "loaded") -> dict[str, str]:
    return {"LoadState": load, "ActiveState": active, "SubState": "x", "UnitFileState": enabled}


STATE: dict[str, Any] = {
    "files": [
        {
            "path": "/etc/quantum/core_gates.env",
            "existed": True,
            "type": "file",
            "sha256": "a" * 64,
            "owner": "root",
            "group": "quantum",
            "mode": "0640",
            "size": 10,
            "link_target": "",
            "backup": "etc/quantum/core_gates.env",
        }
    ],
    "dirs": {"/etc/quantum": True},
    "current": {"existed": True, "target": "/opt/quantum/core-kernel/releases/0.1.0-abc"},
    "group": {"name": "quantum", "exists": True, "members": ["qt"]},
    "owned_dirs": {"/var/log/quantum": True},
    "users": {"quantum-recover": True},
    "units": {
        "quantum-execution.service": unit("active"),
        "quantum-stream-recover.service": unit("inactive", "static"),
        "quantum-stream-recover.timer": unit("active"),
    },
    # read but not part of what a deploy manages
    "markers": {"/x": True},
    "record": {"fingerprint": "f"},
    "changed": False,
}


def changed(edit) -> dict[str, Any]:
    state = copy.deepcopy(STATE)
    edit(state)
    return state


def test_the_same_state_gives_the_same_digest() -> None:
    assert digest(STATE, VOLATILE) == digest(copy.deepcopy(STATE), VOLATILE)
    assert len(digest(STATE, VOLATILE)) == 64


@pytest.mark.parametrize(
    "what",
    [
        lambda s: s["files"][0].update(sha256="b" * 64),  # a hand edit
        lambda s: s["files"][0].update(mode="0644"),
        lambda s: s["files"][0].update(owner="qt"),
        lambda s: s["files"][0].update(existed=False),
        lambda s: s["dirs"].update({"/etc/quantum": False}),
        lambda s: s["current"].update(target="/opt/quantum/core-kernel/releases/0.0.9-old"),
        lambda s: s["group"].update(members=[]),
        lambda s: s["owned_dirs"].update({"/var/log/quantum": False}),
        lambda s: s["users"].update({"quantum-recover": False}),
        lambda s: s["units"]["quantum-stream-recover.timer"].update(ActiveState="inactive"),
        lambda s: s["units"]["quantum-execution.service"].update(ActiveState="failed"),
        lambda s: s["units"]["quantum-execution.service"].update(UnitFileState="disabled"),
        lambda s: s["units"]["quantum-execution.service"].update(LoadState="masked"),
        lambda s: s["units"]["quantum-stream-recover.service"].update(LoadState="not-found"),
        lambda s: s["units"].pop("quantum-stream-recover.timer"),
    ],
)
def test_every_difference_a_full_run_would_fix_changes_the_digest(what) -> None:
    assert digest(changed(what), VOLATILE) != digest(STATE, VOLATILE)


@pytest.mark.parametrize(
    "what",
    [
        # the timer's oneshot runs and ends on its own
        lambda s: s["units"]["quantum-stream-recover.service"].update(ActiveState="activating"),
        lambda s: s["units"]["quantum-stream-recover.service"].update(ActiveState="failed"),
        # SubState is detail of the same activity
        lambda s: s["units"]["quantum-execution.service"].update(SubState="running"),
        # what the call read besides the managed state
        lambda s: s["markers"].update({"/x": False}),
        lambda s: s["record"].update(fingerprint="g"),
    ],
)
def test_what_comes_and_goes_by_itself_does_not(what) -> None:
    assert digest(changed(what), VOLATILE) == digest(STATE, VOLATILE)


def test_a_oneshot_not_named_volatile_counts_its_activity() -> None:
    """Only the units the role names volatile are excused: any other counts."""
    active = changed(
        lambda s: s["units"]["quantum-stream-recover.service"].update(ActiveState="active")
    )
    assert digest(active, []) != digest(STATE, [])
    assert digest(active, VOLATILE) == digest(STATE, VOLATILE)


def test_the_role_and_the_rollback_name_the_same_record() -> None:
    """A rollback (restore.py, also ROLLBACK.sh) removes the record the role writes: one name."""
    role_vars = yaml.safe_load((PROJECT / "roles/core_kernel/vars/main.yml").read_text())
    restore = load("_digest_restore", "files/kernel/src/core_kernel/restore.py")
    assert role_vars["_core_kernel_applied_record"] == restore.APPLIED_RECORD
