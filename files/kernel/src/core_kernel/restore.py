"""``core-kernel restore EVIDENCE_DIR``: put a host back to the before state a deploy recorded.

The one rollback: ``roles/core_kernel/tasks/rollback.yml`` and each evidence directory's
``ROLLBACK.sh`` both run this file. It reads ``backup/manifest.json`` (written by the role's
evidence_before.yml) and restores files byte-identical with owner/group/mode, removes files and
directories the deploy created, switches the release symlink back, keeps and removes the
run-time directories and users the deploy created, puts every recorded unit back to its
enabled/disabled/masked and active/inactive state (daemon-reload in between; a unit the deploy
left ``failed`` is reset, one recorded ``failed`` is left so) and then checks the host against
the manifest.

Standard library only, and no other core_kernel import: the deploy copies this file into the
evidence directory, and ROLLBACK.sh runs that copy with the system ``python3`` - so a rollback
works when the release it leaves is broken (a venv that does not start, a missing wheel).

Exit codes:

* 0 the host equals the recorded before state (``--dry-run``: the plan was listed);
* 1 restored, but the final check found differences (listed in the result);
* 2 refused, nothing changed: not a kernel evidence directory, an unsafe or malformed
  manifest, a bad option;
* 3 refused, nothing changed: a backup copy is missing or its sha256 differs;
* 4 a step failed part-way (one line names it); the host is partly restored - run it again.

The result is JSON on stdout and in ``EVIDENCE_DIR/rollback_<stamp>/result.json`` (not written
by ``--dry-run``); progress and errors go to stderr, one line each. A second run changes
nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_DIFFERS, EXIT_REFUSED, EXIT_BACKUP, EXIT_PARTIAL = 0, 1, 2, 3, 4
DEFAULT_CURRENT_LINK = "/opt/quantum/core-kernel/current"
DEFAULT_PENDING_MARKER = "PENDING.json"
#: The last proven deploy's record beside the evidence (roles/core_kernel/tasks/unchanged.yml): a
#: deploy with the same inputs on a host in the recorded state skips its work. A rollback takes
#: the host away from that state, so it removes the record first.
APPLIED_RECORD = "APPLIED.json"
#: In the evidence directory while a restore is changing the host: the next run owes the
#: restarts even if every file is already back (the run that died may not have restarted).
IN_PROGRESS = ".restore-in-progress"
_UNIT_KEYS = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState")
_RUNNING = {"active", "activating", "reloading", "deactivating", "refreshing"}
_MASKED = {"masked", "masked-runtime"}


class Refused(Exception):
    """Nothing was changed; the message is one line."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


class StepFailed(Exception):
    """A change failed part-way; the message names the step."""


# --- the manifest ----------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    # Ansible may have rendered a bool as text ("True") into the manifest.
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1"}
    return bool(value)


def _abs_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise Refused(f"manifest {what}: {value!r} is not an absolute path")
    if any(part in {"..", "."} for part in value.split("/")) or os.path.normpath(value) != value:
        raise Refused(f"manifest {what}: {value!r} is not a normalised path")
    return value


@dataclass(frozen=True)
class FileRecord:
    path: str
    existed: bool
    type: str = ""
    sha256: str = ""
    owner: str = ""
    group: str = ""
    mode: str = ""
    link_target: str = ""
    backup: str = ""


@dataclass
class Manifest:
    created: str
    host: str
    release_new: str
    files: list[FileRecord]
    dirs: dict[str, bool]
    owned_dirs: dict[str, bool]
    users: dict[str, bool]
    units: dict[str, dict[str, str]]
    current_existed: bool
    current_target: str
    current_path: str | None
    group_name: str
    group_existed: bool
    group_added: list[str]


def _file_record(raw: Any, index: int) -> FileRecord:
    if not isinstance(raw, dict):
        raise Refused(f"manifest files[{index}]: not an object")
    path = _abs_path(raw.get("path"), f"files[{index}].path")
    if not _truthy(raw.get("existed")):
        return FileRecord(path=path, existed=False)
    kind = raw.get("type")
    rec = FileRecord(
        path=path,
        existed=True,
        type=str(kind),
        sha256=str(raw.get("sha256", "")),
        owner=str(raw.get("owner", "")),
        group=str(raw.get("group", "")),
        mode=str(raw.get("mode", "")),
        link_target=str(raw.get("link_target", "")),
        backup=str(raw.get("backup", "")),
    )
    if kind == "file":
        backup = rec.backup
        if not backup or backup.startswith("/") or ".." in backup.split("/"):
            raise Refused(f"manifest files[{index}].backup: {backup!r} is not inside backup/")
        if len(rec.sha256) != 64 or any(c not in "0123456789abcdef" for c in rec.sha256):
            raise Refused(f"manifest files[{index}].sha256: not a sha256 hex digest")
        try:
            if not 0 <= int(rec.mode, 8) <= 0o7777:
                raise ValueError
        except ValueError:
            raise Refused(
                f"manifest files[{index}].mode: {rec.mode!r} is not an octal mode"
            ) from None
        if not rec.owner or not rec.group:
            raise Refused(f"manifest files[{index}]: owner and group are required")
    elif kind == "link":
        if not rec.link_target:
            raise Refused(f"manifest files[{index}].link_target: empty for a link")
    elif kind != "other":
        raise Refused(f"manifest files[{index}].type: {kind!r} is not file, link or other")
    return rec


def _bool_map(raw: Any, what: str, paths: bool) -> dict[str, bool]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Refused(f"manifest {what}: not an object")
    out: dict[str, bool] = {}
    for key, value in raw.items():
        if paths:
            _abs_path(key, f"{what} key")
        elif (
            not isinstance(key, str)
            or not key
            or not key.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise Refused(f"manifest {what}: {key!r} is not a user name")
        out[key] = _truthy(value)
    return out


def _units(raw: Any) -> dict[str, dict[str, str]]:
    if not isinstance(raw, dict):
        raise Refused("manifest units: not an object")
    units: dict[str, dict[str, str]] = {}
    for unit, props in raw.items():
        if not isinstance(unit, str) or not unit or unit.startswith("-") or "/" in unit:
            raise Refused(f"manifest units: {unit!r} is not a unit name")
        if not isinstance(props, dict):
            raise Refused(f"manifest units.{unit}: not an object")
        units[unit] = {k: str(props.get(k, "")) for k in _UNIT_KEYS}
    return units


def parse_manifest(data: Any) -> Manifest:
    """The manifest as written by the role, validated; Refused names the first bad field."""
    if not isinstance(data, dict):
        raise Refused("manifest: not a JSON object")
    missing = [
        k for k in ("created", "files", "units", "current", "group", "dirs") if k not in data
    ]
    if missing:
        raise Refused(f"manifest: missing {', '.join(missing)} (not a core_kernel manifest)")
    if not isinstance(data["files"], list):
        raise Refused("manifest files: not a list")
    current = data["current"]
    group = data["group"]
    if not isinstance(current, dict) or not isinstance(group, dict):
        raise Refused("manifest current/group: not objects")
    current_existed = _truthy(current.get("existed"))
    target = str(current.get("target") or "")
    if current_existed and not target:
        raise Refused("manifest current.target: empty although current existed")
    current_path = current.get("path")
    if current_path is not None:
        current_path = _abs_path(current_path, "current.path")
    members = [str(m) for m in group.get("members") or []]
    before = {str(m) for m in group.get("members_before") or []}
    return Manifest(
        created=str(data.get("created", "")),
        host=str(data.get("host", "")),
        release_new=str(data.get("release_new", "")),
        files=[_file_record(raw, i) for i, raw in enumerate(data["files"])],
        dirs=_bool_map(data.get("dirs"), "dirs", paths=True),
        owned_dirs=_bool_map(data.get("owned_dirs"), "owned_dirs", paths=True),
        users=_bool_map(data.get("users"), "users", paths=False),
        units=_units(data["units"]),
        current_existed=current_existed,
        current_target=target,
        current_path=current_path,
        group_name=str(group.get("name") or ""),
        group_existed=_truthy(group.get("existed_before_run", True)),
        group_added=[m for m in members if m not in before],
    )


def _trusted(path: Path, what: str) -> None:
    # The manifest says which paths root writes: only one that root (the caller) owns and
    # nobody else may write is followed.
    info = path.stat()
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Refused(f"{path}: {what} is writable by another user than the one restoring")


def load_evidence(evidence: str) -> tuple[Path, Manifest]:
    """The resolved evidence directory and its manifest, or Refused (nothing changed)."""
    path = Path(evidence)
    if not path.is_dir():
        raise Refused(f"{evidence}: not a directory")
    path = path.resolve()
    manifest_path = path / "backup" / "manifest.json"
    if not manifest_path.is_file():
        raise Refused(f"{path}: not a kernel evidence directory (no backup/manifest.json)")
    _trusted(path, "the evidence directory")
    _trusted(manifest_path, "the manifest")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"{manifest_path}: not JSON ({exc})") from None
    return path, parse_manifest(data)


# --- the host ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _name(getter: Callable[[int], Any], ident: int) -> str:
    try:
        return str(getter(ident)[0])
    except KeyError:
        return str(ident)


def file_now(path: Path) -> dict[str, Any]:
    """The same record the role's core_kernel_state module takes, for one path."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {"existed": False}
    kind = "link" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    return {
        "existed": True,
        "type": kind,
        "sha256": _sha256(path) if kind == "file" else "",
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "link_target": os.readlink(path) if kind == "link" else "",
    }


def file_matches(rec: FileRecord, now: dict[str, Any]) -> bool:
    if not rec.existed:
        return not now["existed"]
    if not now["existed"] or now["type"] != rec.type:
        return False
    if rec.type == "file":
        return (now["sha256"], now["owner"], now["group"], now["mode"]) == (
            rec.sha256,
            rec.owner,
            rec.group,
            f"{int(rec.mode, 8):04o}",
        )
    if rec.type == "link":
        return bool(now["link_target"] == rec.link_target)
    return True  # "other" (a directory, a device): recorded, never written


def read_units(names: Sequence[str], run: Runner) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    out = run(["systemctl", "show", "--no-pager", "-p", ",".join(_UNIT_KEYS), *names], True)
    blocks = [b for b in out.strip().split("\n\n") if b.strip()]
    if len(blocks) != len(names):
        raise StepFailed(f"systemctl show answered {len(blocks)} blocks for {len(names)} units")
    units: dict[str, dict[str, str]] = {}
    for name, block in zip(names, blocks, strict=True):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        units[name] = {k: props.get(k, "") for k in _UNIT_KEYS}
    return units


Runner = Callable[[list[str], bool], str]


def run_command(argv: list[str], capture: bool) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise StepFailed(
            f"{' '.join(argv)}: exit {proc.returncode}: {detail[-1] if detail else ''}"
        )
    return proc.stdout if capture else ""


# --- unit decisions (pure, so the masked/static cases are tested without systemd) --------------


def units_to_quiet(
    before: dict[str, dict[str, str]], now: dict[str, dict[str, str]]
) -> list[list[str]]:
    """Before the files change: stop what was not running, disable what was not enabled
    (while its unit file still exists, so its .wants/ links go with it)."""
    steps: list[list[str]] = []
    for unit, want in before.items():
        got = now.get(unit, {})
        if got.get("LoadState", "not-found") == "not-found":
            continue
        if want.get("ActiveState") != "active" and got.get("ActiveState") in _RUNNING:
            steps.append(["systemctl", "stop", unit])
        was = want.get("UnitFileState", "") if want.get("LoadState") != "not-found" else ""
        if got.get("UnitFileState") == "enabled" and was in {"", "disabled"} | _MASKED:
            steps.append(["systemctl", "disable", unit])
    return steps


#: ActiveStates systemd passes through on its own (a timer's oneshot starting or ending)
TRANSIENT_STATES = frozenset({"activating", "deactivating", "reloading", "refreshing"})
#: How long the final check waits for a unit to leave such a state before comparing
SETTLE_SECONDS = 30.0
SETTLE_POLL_SECONDS = 0.5


def units_to_restore(
    before: dict[str, dict[str, str]], now: dict[str, dict[str, str]], restart_owed: bool
) -> list[list[str]]:
    """After the files and a daemon-reload: mask/unmask/enable/disable back to the recorded
    unit-file state, then start (restart if anything changed: the running process still has the
    removed drop-in's environment) or stop back to the recorded active state."""
    steps: list[list[str]] = []
    for unit, want in before.items():
        got = now.get(unit, {})
        # A failure the deploy caused (a oneshot sweep that ran against the broken release)
        # stays in systemd's memory after its files are back: clear it, which also resets the
        # start limit the restart below may need. A unit recorded as failed was failed before
        # the deploy - the host's own state, kept for its operator to look at.
        if got.get("ActiveState") == "failed" and want.get("ActiveState") != "failed":
            steps.append(["systemctl", "reset-failed", unit])
        if want.get("LoadState") == "not-found":
            continue  # its file is gone again; units_to_quiet stopped and disabled it
        was, state = want.get("UnitFileState", ""), got.get("UnitFileState", "")
        if was in _MASKED and state != was:
            if state in _MASKED:
                steps.append(["systemctl", "unmask", unit])
            steps.append(
                ["systemctl", "mask", *(["--runtime"] if was == "masked-runtime" else []), unit]
            )
        elif state in _MASKED and was not in _MASKED:
            steps.append(["systemctl", "unmask", unit])
            if was == "enabled":
                steps.append(["systemctl", "enable", unit])
        elif was == "enabled" and state != "enabled":
            steps.append(["systemctl", "enable", unit])
        elif was == "disabled" and state == "enabled":
            steps.append(["systemctl", "disable", unit])
        running = got.get("ActiveState") in _RUNNING
        if want.get("ActiveState") == "active":
            if restart_owed or not running or got.get("ActiveState") != "active":
                steps.append(["systemctl", "restart", unit])
        elif running:
            steps.append(["systemctl", "stop", unit])
    return steps


def unit_mismatch(
    before: dict[str, dict[str, str]],
    after: dict[str, dict[str, str]],
    timers_only_active: bool = False,
) -> list[str]:
    """Units whose load/unit-file/active state differs from the record (SubState ignored: a
    oneshot may legitimately be between runs). The one implementation: the role's filter
    ``core_kernel_unit_mismatch`` loads this file and calls it."""
    bad: list[str] = []
    for unit, want in before.items():
        got = after.get(unit, {})
        if want.get("LoadState") == "not-found":
            if got.get("LoadState", "not-found") != "not-found":
                bad.append(f"{unit}: exists now, did not before")
            continue
        for key in ("UnitFileState", "ActiveState"):
            # A oneshot service flips between inactive and activating whenever its timer
            # fires: for change detection during a deploy only a timer's ActiveState counts.
            if key == "ActiveState" and timers_only_active and not unit.endswith(".timer"):
                continue
            if got.get(key) != want.get(key):
                bad.append(f"{unit}: {key} {got.get(key)!r} != recorded {want.get(key)!r}")
    return bad


# --- the restore ---------------------------------------------------------------------------------


@dataclass
class Restore:
    evidence: Path
    manifest: Manifest
    root: Path = Path("/")
    current_link: str = DEFAULT_CURRENT_LINK
    pending_marker: str = DEFAULT_PENDING_MARKER
    stamp: str = ""
    dry_run: bool = False
    run: Runner = run_command
    log: TextIO = sys.stderr
    actions: list[str] = field(default_factory=list)
    _units_quieted: dict[str, dict[str, str]] = field(default_factory=dict)

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def say(self, text: str) -> None:
        self.actions.append(text)
        print(f"restore: {'would ' if self.dry_run else ''}{text}", file=self.log, flush=True)

    @property
    def touches_system(self) -> bool:
        m = self.manifest
        return bool(m.units or m.users or m.group_added or not m.group_existed)

    @property
    def rollback_dir(self) -> Path:
        return self.evidence / f"rollback_{self.stamp}"

    # -- checks before any change --
    def check_backups(self) -> None:
        backup = (self.evidence / "backup").resolve()
        for rec in self.manifest.files:
            if not (rec.existed and rec.type == "file"):
                continue
            copy = (backup / rec.backup).resolve()
            if backup not in copy.parents:
                raise Refused(f"{rec.path}: backup copy {rec.backup} lies outside backup/")
            if not copy.is_file():
                raise Refused(f"{rec.path}: backup copy {copy} is missing", EXIT_BACKUP)
            if _sha256(copy) != rec.sha256:
                raise Refused(
                    f"{rec.path}: backup copy {copy} differs from its sha256", EXIT_BACKUP
                )

    # -- steps; each decides from the host as it is now, so a second run finds nothing --
    def quiet_units(self, units: dict[str, dict[str, str]]) -> None:
        for argv in units_to_quiet(self.manifest.units, units):
            self.say(f"{argv[1]} {argv[-1]}")
            if not self.dry_run:
                self.run(argv, False)
            elif argv[1] == "stop":  # the plan goes on from the state the step would leave
                units[argv[-1]]["ActiveState"] = "inactive"
            else:
                units[argv[-1]]["UnitFileState"] = "disabled"
        self._units_quieted = units

    def restore_files(self) -> None:
        backup = self.evidence / "backup"
        for rec in self.manifest.files:
            target = self.host(rec.path)
            now = file_now(target)
            if file_matches(rec, now):
                continue
            if not rec.existed:
                if now["type"] == "other":
                    raise StepFailed(
                        f"{rec.path}: a directory or device where the deploy wrote a file"
                    )
                self.say(f"remove {rec.path} (did not exist before)")
                if not self.dry_run:
                    target.unlink()
                continue
            if rec.type == "other":
                continue
            if now.get("type") == "other":
                raise StepFailed(f"{rec.path}: a directory or device where a {rec.type} belongs")
            if rec.type == "link":
                self.say(f"restore link {rec.path} -> {rec.link_target}")
                if not self.dry_run:
                    self._replace_link(target, rec.link_target)
                continue
            self.say(f"restore {rec.path} ({rec.owner}:{rec.group} {rec.mode})")
            if not self.dry_run:
                self._replace_file(target, backup / rec.backup, rec)

    def _replace_file(self, target: Path, source: Path, rec: FileRecord) -> None:
        try:
            uid, gid = pwd.getpwnam(rec.owner).pw_uid, grp.getgrnam(rec.group).gr_gid
        except KeyError as exc:
            raise StepFailed(
                f"{rec.path}: owner/group {rec.owner}:{rec.group} unknown ({exc})"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".rollback-tmp")
        tmp.unlink(missing_ok=True)
        # Owner and mode on the temporary copy first: the file is never visible with the
        # wrong ones (the env file may hold a secret and must not be world-readable at any time).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, int(rec.mode, 8))
            with os.fdopen(fd, "wb", closefd=True) as out, source.open("rb") as src:
                fd = -1
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
        finally:
            if fd >= 0:
                os.close(fd)
        if _sha256(tmp) != rec.sha256:
            tmp.unlink()
            raise StepFailed(f"{rec.path}: the copy does not match the recorded sha256")
        os.replace(tmp, target)

    @staticmethod
    def _replace_link(target: Path, link_target: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".rollback-tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(link_target, tmp)
        os.replace(tmp, target)

    def restore_current(self) -> None:
        link = self.host(self.manifest.current_path or self.current_link)
        now = file_now(link)
        m = self.manifest
        if m.current_existed:
            if now["existed"] and now["type"] == "link" and now["link_target"] == m.current_target:
                return
            if now["existed"] and now["type"] != "link":
                raise StepFailed(f"{link}: not a symlink; the release switch cannot go back")
            self.say(f"switch {link} back to {m.current_target}")
            if not self.dry_run:
                self._replace_link(link, m.current_target)
        elif now["existed"]:
            if now["type"] != "link":
                raise StepFailed(f"{link}: not a symlink; not removed")
            self.say(f"remove {link} (there was none before)")
            if not self.dry_run:
                link.unlink()

    def remove_owned_dirs(self) -> str | None:
        """Run-time directories the deploy created (the recovery log): their contents go into
        this rollback's evidence (root's alone), then the directory goes."""
        kept_root = self.rollback_dir / "kept"
        kept_any = None
        for directory, existed in self.manifest.owned_dirs.items():
            path = self.host(directory)
            if existed or not path.is_dir() or path.is_symlink():
                continue
            kept = kept_root / directory.lstrip("/")
            self.say(f"keep {directory} in {kept}, then remove it (created by the deploy)")
            if self.dry_run:
                continue
            kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if kept.exists():
                shutil.rmtree(kept)
            shutil.copytree(path, kept, symlinks=True)
            _root_only(kept_root)
            shutil.rmtree(path)
            kept_any = str(kept)
        return kept_any

    def remove_created_dirs(self) -> None:
        for directory in sorted(self.manifest.dirs, key=len, reverse=True):
            if self.manifest.dirs[directory]:
                continue
            path = self.host(directory)
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                self.say(f"remove empty directory {directory} (created by the deploy)")
                if not self.dry_run:
                    path.rmdir()

    def restore_accounts(self) -> None:
        m = self.manifest
        group = _group(m.group_name) if m.group_name else None
        for member in m.group_added:
            if group is not None and member in group.gr_mem:
                self.say(f"remove {member} from group {m.group_name} (added by the deploy)")
                if not self.dry_run:
                    self.run(["gpasswd", "-d", member, m.group_name], False)
        # Users before the group: groupdel refuses a group that is a user's primary group.
        for user, existed in m.users.items():
            if not existed and _user_exists(user):
                self.say(f"remove user {user} (created by the deploy)")
                if not self.dry_run:
                    self.run(["userdel", user], False)
        if m.group_name and not m.group_existed and _group(m.group_name) is not None:
            self.say(f"remove group {m.group_name} (created by the deploy)")
            if not self.dry_run:
                self.run(["groupdel", m.group_name], False)

    def restore_units(self, restart_owed: bool) -> None:
        if not self.manifest.units:
            return
        if self.dry_run:
            # Nothing was reloaded: the plan goes on from the state the earlier steps would
            # leave (a unit file the deploy created still shows until a real run removes it).
            now = self._units_quieted
        else:
            self.run(["systemctl", "daemon-reload"], False)
            now = read_units(list(self.manifest.units), self.run)
        for argv in units_to_restore(self.manifest.units, now, restart_owed):
            self.say(f"{' '.join(argv[1:-1])} {argv[-1]}")
            if not self.dry_run:
                self.run(argv, False)

    def forget_applied(self) -> None:
        record = self.evidence.parent / APPLIED_RECORD
        if record.exists():
            self.say(f"remove {record} (the host leaves the last deploy's recorded state)")
            if not self.dry_run:
                record.unlink()

    def clear_pending(self) -> None:
        marker = self.evidence.parent / self.pending_marker
        if marker.exists():
            self.say(f"clear {marker} (nothing is pending once the host is back)")
            if not self.dry_run:
                marker.unlink()

    # -- the whole run --
    def settled_units(self, record: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        """The units' states once none is passing through a state it was not recorded in.

        A timer may start its oneshot between the restore and this check (``activating`` where
        ``inactive`` was recorded): that is the host running, not a failed rollback, so the check
        waits - up to SETTLE_SECONDS - for it to end before it compares.
        """
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            now = read_units(list(record), self.run)
            moving = [
                unit
                for unit, got in now.items()
                if got.get("ActiveState") in TRANSIENT_STATES
                and got.get("ActiveState") != record.get(unit, {}).get("ActiveState")
            ]
            if not moving or time.monotonic() >= deadline:
                return now
            time.sleep(SETTLE_POLL_SECONDS)

    def execute(self) -> dict[str, Any]:
        m = self.manifest
        if self.root != Path("/") and self.touches_system:
            raise Refused("--root: units, users and groups are only restored on the real root")
        self.check_backups()
        in_progress = self.evidence / IN_PROGRESS
        restart_owed = in_progress.exists()
        if not self.dry_run:
            in_progress.write_text(f"{self.stamp}\n")
        self.forget_applied()
        units_now = read_units(list(m.units), self.run)
        self.quiet_units(units_now)
        self.restore_files()
        self.restore_current()
        kept = self.remove_owned_dirs()
        self.remove_created_dirs()
        self.restore_accounts()
        changed_before_units = bool(self.actions)
        self.restore_units(restart_owed or changed_before_units)
        result = self.check(kept)
        if self.dry_run or result["ok"]:
            self.clear_pending()
        if not self.dry_run and result["ok"]:
            in_progress.unlink(missing_ok=True)
        result["actions"] = self.actions
        result["changed"] = bool(self.actions)
        return result

    def check(self, kept: str | None) -> dict[str, Any]:
        m = self.manifest
        files = []
        for rec in m.files:
            now = file_now(self.host(rec.path))
            files.append(
                {
                    "path": rec.path,
                    "existed": rec.existed,
                    "exists": now["existed"],
                    "ok": file_matches(rec, now),
                }
            )
        units_after = self.settled_units(m.units) if not self.dry_run else {}
        mismatch: list[str] = [f["path"] for f in files if not f["ok"]]
        link = self.host(m.current_path or self.current_link)
        current = file_now(link)
        if m.current_existed != bool(current["existed"]) or (
            m.current_existed and current.get("link_target") != m.current_target
        ):
            mismatch.append(str(link))
        mismatch += [
            d for d, existed in m.owned_dirs.items() if not existed and self.host(d).is_dir()
        ]
        mismatch += [
            f"user {u}" for u, existed in m.users.items() if not existed and _user_exists(u)
        ]
        units_bad = unit_mismatch(m.units, units_after) if not self.dry_run else []
        ok = not mismatch and not units_bad
        return {
            "ok": ok if not self.dry_run else None,
            "dry_run": self.dry_run,
            "evidence": str(self.evidence),
            "stamp": self.stamp,
            "created": m.created,
            "host": m.host,
            "release_new": m.release_new,
            "current": {"existed": m.current_existed, "target": m.current_target},
            "files": files,
            "units_before": m.units,
            "units_after": units_after,
            "file_mismatch": mismatch if not self.dry_run else [],
            "unit_mismatch": units_bad,
            "kept": kept,
        }


def _root_only(top: Path) -> None:
    """u=rwX,go= and root:root (the caller) over a tree: evidence is root's alone."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                os.lchown(path, os.geteuid(), os.getegid())
                continue
            os.chown(path, os.geteuid(), os.getegid())
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
    os.chown(top, os.geteuid(), os.getegid())
    os.chmod(top, 0o700)


def _group(name: str) -> grp.struct_group | None:
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _write_result(restore: Restore, result: dict[str, Any]) -> None:
    directory = restore.rollback_dir
    directory.mkdir(mode=0o700, exist_ok=True)
    # It may exist already, made as a parent of kept/ with the umask's 0755.
    os.chmod(directory, 0o700)
    path = directory / "result.json"
    tmp = directory / ".result.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=1, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, shared by ``core-kernel restore`` and ``python3 restore.py``."""
    parser.add_argument("evidence", metavar="EVIDENCE_DIR", help="a core_kernel_<stamp> directory")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would change; change nothing"
    )
    parser.add_argument(
        "--current-link",
        default=DEFAULT_CURRENT_LINK,
        metavar="PATH",
        help=f"the release symlink, if the manifest does not name it ({DEFAULT_CURRENT_LINK})",
    )
    parser.add_argument(
        "--pending-marker",
        default=DEFAULT_PENDING_MARKER,
        metavar="NAME",
        help="the deploy's change-in-progress marker beside the evidence directory",
    )
    parser.add_argument("--stamp", metavar="UTC", help="names rollback_<stamp>/ (default: now)")
    parser.add_argument("--root", default="/", metavar="DIR", help=argparse.SUPPRESS)


def add_subcommand(sub: Any) -> None:
    """``core-kernel restore``: ``sub`` is the cli's subparsers action."""
    p = sub.add_parser("restore", help="put the host back to an evidence directory's before state")
    add_arguments(p)
    p.set_defaults(func=run, config=None)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stamp = args.stamp or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if not stamp.isascii() or not stamp.replace("T", "").replace("Z", "").isdigit():
        err.write(f"restore: --stamp={stamp!r}: must look like 20260101T000000Z\n")
        return EXIT_REFUSED
    if "/" in args.pending_marker or args.pending_marker in {"", ".", ".."}:
        err.write(f"restore: --pending-marker={args.pending_marker!r}: must be a file name\n")
        return EXIT_REFUSED
    try:
        evidence, manifest = load_evidence(args.evidence)
        restore = Restore(
            evidence=evidence,
            manifest=manifest,
            root=Path(args.root),
            current_link=_abs_path(args.current_link, "--current-link"),
            pending_marker=args.pending_marker,
            stamp=stamp,
            dry_run=args.dry_run,
            log=err,
        )
        result = restore.execute()
    except Refused as exc:
        err.write(f"restore: refused, nothing changed: {exc}\n")
        return exc.code
    except (StepFailed, OSError) as exc:
        err.write(f"restore: failed part-way, run it again: {exc}\n")
        return EXIT_PARTIAL
    if not args.dry_run:
        _write_result(restore, result)
    json.dump(result, out, indent=1, sort_keys=True)
    out.write("\n")
    if args.dry_run:
        return EXIT_OK
    if not result["ok"]:
        err.write(
            "restore: the host still differs: "
            f"{'; '.join(result['file_mismatch'] + result['unit_mismatch'])}\n"
        )
        return EXIT_DIFFERS
    err.write(f"restore: OK - {evidence} ({len(result['actions'])} changes)\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="restore", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
