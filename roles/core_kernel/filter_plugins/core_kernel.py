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


def core_kernel_manifest_entry(pair: list[Any]) -> dict[str, Any]:
    """(stat result, path) -> the manifest record rollback needs to put the path back."""
    stat, path = pair
    if not stat.get("exists"):
        return {"path": path, "existed": False}
    kind = "link" if stat.get("islnk") else "file" if stat.get("isreg") else "other"
    return {
        "path": path,
        "existed": True,
        "type": kind,
        "sha256": stat.get("checksum", ""),
        "owner": stat.get("pw_name", str(stat.get("uid", ""))),
        "group": stat.get("gr_name", str(stat.get("gid", ""))),
        "mode": stat.get("mode", ""),
        "size": stat.get("size", 0),
        "link_target": stat.get("lnk_source", "") if kind == "link" else "",
        "backup": core_kernel_backup_name(path) if kind == "file" else "",
    }


def core_kernel_pairs_dict(pairs: list[Any]) -> dict[str, Any]:
    return {str(k): v for k, v in pairs}


def core_kernel_restore_check(pair: list[Any]) -> dict[str, Any]:
    """(stat now, manifest record) -> is the path back to what the manifest recorded?"""
    stat, rec = pair
    exists = bool(stat.get("exists"))
    result: dict[str, Any] = {"path": rec["path"], "existed": rec["existed"], "exists": exists}
    if not rec["existed"]:
        result["ok"] = not exists
        return result
    if rec.get("type") == "link":
        result["ok"] = exists and stat.get("lnk_source", "") == rec.get("link_target")
        return result
    got = (stat.get("checksum"), stat.get("pw_name"), stat.get("gr_name"), stat.get("mode"))
    want = (rec.get("sha256"), rec.get("owner"), rec.get("group"), rec.get("mode"))
    result["ok"] = exists and got == want
    result["sha256"] = stat.get("checksum", "")
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
            "core_kernel_manifest_entry": core_kernel_manifest_entry,
            "core_kernel_pairs_dict": core_kernel_pairs_dict,
            "core_kernel_props": core_kernel_props,
            "core_kernel_restore_check": core_kernel_restore_check,
            "core_kernel_unit_mismatch": core_kernel_unit_mismatch,
        }
