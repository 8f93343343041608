"""Filters for the wheelhouse the controller builds for each host's Python and platform.

The host is probed once (tasks/wheelhouse_target.yml runs a few lines of Python with the host's
core_kernel_python: its PEP 508 marker environment, C library, pointer width); from that and the
host's facts, ``core_kernel_wheel_target`` says which wheels fit the host (interpreter, ABI,
platform tags) or why no wheelhouse can serve it. The other filters turn pip's failure into one
line and check the built wheelhouse against the host's own environment markers (pip evaluates
markers for the controller, see core_kernel_wheel_gaps).

They run on the controller in Ansible's own Python, which always has ``packaging`` (a
dependency of ansible-core).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Architectures manylinux defines wheels for (PEP 599/600); the lowest glibc minor each has.
_MANYLINUX_FLOOR = {
    "x86_64": 5,
    "i686": 5,
    "aarch64": 17,
    "armv7l": 17,
    "ppc64le": 17,
    "s390x": 17,
    "riscv64": 17,
}
# The legacy names stand for one glibc version each, on the architectures they were defined for.
_LEGACY = {
    17: ("manylinux2014", {"x86_64", "i686", "aarch64", "armv7l", "ppc64le", "s390x"}),
    12: ("manylinux2010", {"x86_64", "i686"}),
    5: ("manylinux1", {"x86_64", "i686"}),
}
# What Ansible's architecture fact says, as the wheel tag spells it.
_MACHINE_ALIASES = {
    "i386": "i686",
    "i486": "i686",
    "i586": "i686",
    "amd64": "x86_64",
    "arm64": "aarch64",
}
# A 32-bit interpreter on a 64-bit kernel uses the 32-bit wheels (as pip itself decides).
_MACHINE_32 = {"x86_64": "i686", "aarch64": "armv7l"}


def core_kernel_manylinux_tags(glibc: str, machine: str) -> list[str]:
    """Platform tags a glibc ``2.N`` host of ``machine`` runs, most preferred first:
    manylinux_2_N .. manylinux_2_<floor> with the legacy aliases where they apply.

    pip (23.x) does not expand ``--platform manylinux_2_36_aarch64`` to the older tags itself
    (only manylinux2014/2010 get their legacy aliases), so the whole list is passed."""
    major, _, minor = glibc.partition(".")
    if major != "2" or not minor.isdigit():
        raise ValueError(f"not a glibc 2.x version: {glibc!r}")
    floor = _MANYLINUX_FLOOR[machine]
    tags: list[str] = []
    for n in range(int(minor), floor - 1, -1):
        tags.append(f"manylinux_2_{n}_{machine}")
        legacy = _LEGACY.get(n)
        if legacy and machine in legacy[1]:
            tags.append(f"{legacy[0]}_{machine}")
    return tags


def _refused(reason: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason}


def core_kernel_wheel_target(
    probe: dict[str, Any],
    system: str,
    machine: str,
    requires_python: str,
    python: str,
    platforms: list[str] | None = None,
) -> dict[str, Any]:
    """What the host's wheelhouse is built for, from the probe's registered result and facts.

    ``{"ok": true, "key", "build": {key, python, abi, platforms}, "env", ...}`` or
    ``{"ok": false, "reason": "<one line>"}`` for a host no wheelhouse can serve.
    """
    if probe.get("rc") != 0:
        detail = (probe.get("stderr") or probe.get("msg") or "").strip().splitlines()
        return _refused(
            f"{python} did not run on the host (rc={probe.get('rc')}: "
            f"{detail[-1][:200] if detail else 'no output'})"
        )
    try:
        found = json.loads(probe.get("stdout", ""))
        env = found["env"]
        full = Version(env["python_full_version"])
    except (ValueError, KeyError, TypeError, InvalidVersion):
        return _refused(f"{python} gave no usable answer to the wheelhouse probe")
    if system != "Linux":
        return _refused(
            f"the host runs {system}, not Linux: the wheelhouse holds Linux wheels only"
        )
    if env.get("implementation_name") != "cpython":
        return _refused(
            f"{python} is {env.get('implementation_name')} {full}, not CPython (wheels are cpXY)"
        )
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return _refused(f"requires-python {requires_python!r} in pyproject.toml is not a specifier")
    if not spec.contains(full, prereleases=True):
        return _refused(
            f"{python} is Python {full}; the kernel needs requires-python {requires_python}"
        )
    xy = f"{full.major}.{full.minor}"
    abi = f"cp{full.major}{full.minor}" + ("t" if found.get("free_threaded") else "")
    arch = _MACHINE_ALIASES.get(machine, machine)
    if found.get("bits") == 32:
        arch = _MACHINE_32.get(arch, arch)
    glibc = ""
    if platforms:
        tags = list(platforms)
        digest = hashlib.sha256("\n".join(tags).encode()).hexdigest()[:8]
        key = f"{abi}-{tags[0]}-{digest}"  # an override is its own wheelhouse
    else:
        libc = str(found.get("libc") or "")
        if arch not in _MANYLINUX_FLOOR:
            return _refused(
                f"architecture {arch} has no manylinux wheels "
                f"(known: {', '.join(_MANYLINUX_FLOOR)}; or set core_kernel_wheel_platforms)"
            )
        if not libc.startswith("glibc "):
            what = f"C library is {libc}" if libc else "no glibc found"
            return _refused(
                f"{what}, not glibc: the wheelhouse holds manylinux (glibc) wheels only"
            )
        glibc = libc.split(" ", 1)[1].strip()
        try:
            tags = core_kernel_manylinux_tags(glibc, arch)
        except ValueError:
            return _refused(f"glibc version {glibc!r} is not 2.x")
        if not tags:
            return _refused(
                f"glibc {glibc} is older than the oldest manylinux for {arch} "
                f"(2.{_MANYLINUX_FLOOR[arch]})"
            )
        key = f"{abi}-{tags[0]}"
    return {
        "ok": True,
        "reason": "",
        "key": key,
        "glibc": glibc,
        "machine": arch,
        "env": env,
        "build": {"key": key, "python": xy, "abi": abi, "platforms": tags},
    }


def core_kernel_wheel_builds(targets: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The distinct builds of the hosts' targets, each with its wheelhouse directory
    ``<prefix>-<key>``, in a stable order."""
    builds: dict[str, dict[str, Any]] = {}
    for target in targets:
        if target and target.get("ok"):
            build = dict(target["build"])
            build["dir"] = f"{prefix}-{build['key']}"
            builds.setdefault(build["key"], build)
    return [builds[k] for k in sorted(builds)]


_NETWORK = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Network is unreachable|Connection refused|SSLError|ProxyError|ReadTimeoutError"
)


def _requirement(text: str) -> Requirement | None:
    try:
        return Requirement(text.strip())
    except InvalidRequirement:
        return None


def core_kernel_pip_refusal(output: str, target: str) -> str:
    """One line from a failed ``pip download``'s stdout + stderr: the package that has no wheel
    for ``target``, an unreachable index, or pip's own last error."""
    lines = [line.rstrip() for line in output.splitlines()]
    network = next((line for line in lines if _NETWORK.search(line)), None)
    if network:
        return (
            f"the package index is unreachable from the controller (pip: {network.strip()[:200]})"
        )
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        req = missing.group(1)
        via = re.search(
            r"satisfies the requirement " + re.escape(req) + r"[^()]*\(from ([^)]+)\)", output
        )
        needed = f" (needed by {via.group(1)})" if via else ""
        return f"no wheel of {req}{needed} fits {target}"
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        section = []
        for line in lines[start:]:
            if not line.strip():
                break
            section.append(line.strip())
        pins: dict[str, tuple[str, str]] = {}
        wants: dict[str, list[tuple[str, Requirement]]] = {}
        for line in section:
            pin = re.match(r"The user requested \(constraint\) (.+)$", line)
            dep = re.match(r"(\S+) (\S+) depends on (.+)$", line)
            user = re.match(r"The user requested (?!\(constraint\))(.+)$", line)
            if pin and (req := _requirement(pin.group(1))):
                exact = [s.version for s in req.specifier if s.operator in ("==", "===")]
                if exact:
                    pins[canonicalize_name(req.name)] = (req.name, exact[0])
            elif dep and (req := _requirement(dep.group(3))):
                wants.setdefault(canonicalize_name(req.name), []).append(
                    (f"{dep.group(1)} {dep.group(2)}", req)
                )
            elif user and (req := _requirement(user.group(1))):
                wants.setdefault(canonicalize_name(req.name), []).append(("the build", req))
        for name, (spelled, version) in pins.items():
            asked = wants.get(name, [])
            # The pin satisfies every requirement on it: only the missing wheel can conflict.
            if all(req.specifier.contains(version, prereleases=True) for _, req in asked):
                by = ", ".join(who for who, _ in asked)
                needed = f" (needed by {by})" if by else ""
                return f"no wheel of {spelled}=={version}{needed} fits {target}"
        return f"the pins conflict for {target}: {'; '.join(section)[:300]}"
    other = re.search(r"ERROR: Package '([^']+)' requires a different Python: (.+)", output)
    if other:
        return f"{other.group(1)} does not support the target Python ({other.group(2).strip()})"
    errors = [line for line in lines if line.startswith("ERROR:")]
    last = errors[-1] if errors else next((x for x in reversed(lines) if x.strip()), "no output")
    return f"pip download for {target} failed: {last.strip()[:300]}"


def _metadata(wheel: Path) -> tuple[str, Version, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(name).decode("utf-8"))
    return meta["Name"], Version(meta["Version"]), meta.get_all("Requires-Dist") or []


def core_kernel_wheel_gaps(directory: str, env: dict[str, str], root: str) -> list[str]:
    """Requirements the *host* needs that the wheelhouse lacks.

    pip evaluates environment markers against the controller's interpreter, not the target's
    (pypa/pip#6117, #11010): a dependency marked ``python_full_version < '3.11.3'`` or
    ``platform_machine == 'aarch64'`` is left out when the controller does not match. This walks
    the wheelhouse from ``root`` with the host's own marker environment (from the probe) and
    names each applicable requirement no wheel in it satisfies."""
    dists: dict[str, tuple[str, Version, list[str]]] = {}
    for wheel in sorted(Path(directory).glob("*.whl")):
        name, version, requires = _metadata(wheel)
        dists[canonicalize_name(name)] = (name, version, requires)
    gaps: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(canonicalize_name(root), frozenset())]
    while todo:
        key, extras = todo.pop()
        if (key, extras) in seen or key not in dists:
            continue
        seen.add((key, extras))
        name, version, requires = dists[key]
        for text in requires:
            req = _requirement(text)
            if req is None:
                continue
            try:
                applies = req.marker is None or any(
                    req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
                )
            except (InvalidMarker, ValueError):
                applies = True
            if not applies:
                continue
            dep = canonicalize_name(req.name)
            have = dists.get(dep)
            if have is None or not req.specifier.contains(have[1], prereleases=True):
                marker = f" [{req.marker}]" if req.marker else ""
                gaps.append(f"{req.name}{req.specifier} (from {name} {version}{marker})")
                continue
            todo.append((dep, frozenset(req.extras)))
    return sorted(set(gaps))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "core_kernel_wheel_target": core_kernel_wheel_target,
            "core_kernel_wheel_builds": core_kernel_wheel_builds,
            "core_kernel_manylinux_tags": core_kernel_manylinux_tags,
            "core_kernel_pip_refusal": core_kernel_pip_refusal,
            "core_kernel_wheel_gaps": core_kernel_wheel_gaps,
        }
