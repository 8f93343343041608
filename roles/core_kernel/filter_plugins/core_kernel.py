"""Filters for the core_kernel role: parse ``systemctl show`` and build backup manifest entries."""

from __future__ import annotations

from typing import Any

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
    """Units whose load/enabled/active state differs from the recorded one (SubState ignored:
    a oneshot may legitimately be between runs)."""
    bad: list[str] = []
    for unit, want in before.items():
        got = after.get(unit, {})
        if want.get("LoadState") == "not-found":
            if got.get("LoadState", "not-found") != "not-found":
                bad.append(f"{unit}: exists now, did not before")
            continue
        for key in ("UnitFileState", "ActiveState"):
            # A oneshot service flips between inactive and activating whenever its timer
            # fires: for change detection only a timer's ActiveState is meaningful.
            if key == "ActiveState" and timers_only_active and not unit.endswith(".timer"):
                continue
            if got.get(key) != want.get(key):
                bad.append(f"{unit}: {key} {got.get(key)!r} != recorded {want.get(key)!r}")
    return bad


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "core_kernel_units": core_kernel_units,
            "core_kernel_backup_name": core_kernel_backup_name,
            "core_kernel_props": core_kernel_props,
            "core_kernel_restore_check": core_kernel_restore_check,
            "core_kernel_unit_mismatch": core_kernel_unit_mismatch,
        }
