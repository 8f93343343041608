"""Filters for the core_kernel role: parse ``systemctl show`` and build backup manifest entries."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

#: The stdlib-only program the host runs for a rollback; its rules are used here, not repeated.
_RESTORE = Path("files/kernel/src/core_kernel/restore.py")
_RESTORE_MODULE = "_core_kernel_filter_restore"


@cache
def _restore() -> ModuleType:
    """restore.py, loaded by path from the tree this file lives in: the repository, or the
    installed collection (both hold roles/core_kernel/ and files/kernel/ under one root; the
    plugins/filter copy is a symlink to this file)."""
    here = Path(__file__).absolute()
    tops = [*here.parents, *here.resolve().parents]
    found = next((top / _RESTORE for top in tops if (top / _RESTORE).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{_RESTORE} not found above {here}: an incomplete checkout?")
    spec = importlib.util.spec_from_file_location(_RESTORE_MODULE, found)
    if spec is None or spec.loader is None:
        raise ImportError(f"{found}: cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the file executes
    sys.modules[_RESTORE_MODULE] = module
    spec.loader.exec_module(module)
    return module


_UNIT_KEYS = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState")


def core_kernel_units(text: str) -> dict[str, dict[str, str]]:
    """``systemctl show -p ... a b c`` prints one block per unit, separated by blank lines."""
    units: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        props: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        if props.get("Id"):
            units[props["Id"]] = {k: props.get(k, "") for k in _UNIT_KEYS}
    return units


def core_kernel_props(text: str) -> dict[str, str] | list[dict[str, str]]:
    """``systemctl show -p ...`` of one unit -> dict; of several (blank-line separated) -> list."""
    blocks = []
    for block in text.strip().split("\n\n"):
        props: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        blocks.append(props)
    return blocks[0] if len(blocks) == 1 else blocks


def core_kernel_backup_name(path: str) -> str:
    """Where a managed file is kept inside backup/: its absolute path without the leading /."""
    return path.lstrip("/")


def core_kernel_restore_check(pair: list[Any]) -> dict[str, Any]:
    """(record now, manifest record), both from core_kernel_state -> is the path back to what
    the manifest recorded?"""
    now, rec = pair
    exists = bool(now.get("existed"))
    result: dict[str, Any] = {"path": rec["path"], "existed": rec["existed"], "exists": exists}
    if not rec["existed"]:
        result["ok"] = not exists
        return result
    keys = ("type", "sha256", "owner", "group", "mode", "link_target")
    result["ok"] = exists and all(now.get(k) == rec.get(k) for k in keys)
    result["sha256"] = now.get("sha256", "")
    return result


def core_kernel_unit_mismatch(
    before: dict[str, dict[str, str]],
    after: dict[str, dict[str, str]],
    timers_only_active: bool = False,
) -> list[str]:
    """Units whose load/enabled/active state differs from the recorded one: restore's own
    ``unit_mismatch``, so the deploy's check and the rollback's verification are one rule."""
    return list(_restore().unit_mismatch(before, after, timers_only_active=timers_only_active))


#: What the digest keeps of the state module's answer (core_kernel_state).
_DIGEST_KEYS = ("files", "dirs", "current", "group", "owned_dirs", "users")


def core_kernel_state_digest(state: Mapping[str, Any], volatile_units: Sequence[str] = ()) -> str:
    """sha256 of the host state a deploy manages, as core_kernel_state read it: each managed
    file's record (existence, type, sha256, owner, group, mode, link target), their directories,
    the release link, the group and its members, owned directories, users, and each unit's
    load state, enablement and whether it is active. A volatile unit (a timer's oneshot, active
    only while its timer runs it) counts by load state and enablement alone, so two reads of a
    host nobody touched give the same digest."""
    units = {}
    for name, unit in sorted(state.get("units", {}).items()):
        kept = {"load": unit.get("LoadState", ""), "enabled": unit.get("UnitFileState", "")}
        if name not in volatile_units:
            kept["active"] = unit.get("ActiveState", "") == "active"
        units[name] = kept
    doc = {key: state.get(key) for key in _DIGEST_KEYS} | {"units": units}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "core_kernel_units": core_kernel_units,
            "core_kernel_backup_name": core_kernel_backup_name,
            "core_kernel_props": core_kernel_props,
            "core_kernel_restore_check": core_kernel_restore_check,
            "core_kernel_unit_mismatch": core_kernel_unit_mismatch,
            "core_kernel_state_digest": core_kernel_state_digest,
        }
