"""The env contract is stated once: the kernel's config model (files/kernel/src/core_kernel/
config.py) is the authority, and this fails when what the role and the docs say drifts from it:

* a key the role's env template writes that the model does not know (or writes twice);
* a role default that, rendered by Ansible exactly as a deploy renders it, means something else
  than the model's default - unless the key is in ROLE_OVERRIDES below, with its reason;
* a role variable not declared in meta/argument_specs.yml, declared without a description, or
  whose argument_specs default differs from defaults/main.yml (every option carries its default);
* a variable a role template reads that the role does not declare;
* a model key missing from files/kernel/README.md's key table, or documented with another
  default; a role variable README.md names that nothing declares, or quotes with another default.

Generic: nothing here lists today's keys. A key added to the model, the template, the defaults
and the docs together passes; one added to only some of them fails, naming the key.

Runs in `make test-controller`:  pytest -p no:cacheprovider -q tests/test_env_contract.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
import yaml
from core_kernel import config
from core_kernel.mode import TRUE_TEXTS

PROJECT = Path(__file__).resolve().parents[1]
ROLE = PROJECT / "roles/core_kernel"
ENV_TEMPLATE = ROLE / "templates/core_gates.env.j2"
KERNEL_README = PROJECT / "files/kernel/README.md"
README = PROJECT / "README.md"

#: Env keys whose role default deliberately differs from the model's default: key -> why.
#: Short on purpose; a key listed here that no longer differs fails too (stale override).
ROLE_OVERRIDES: dict[str, str] = {
    "TRADING_MODE": "no default at all: the inventory must say TESTNET or LIVE (preflight)",
    "BINANCE_TESTNET": "follows the inventory's trading mode",
    "USE_BINANCE_TESTNET": "follows the inventory's trading mode",
    "WORKER_METRICS_LISTEN": "a deployed worker serves /metrics on loopback (docs/METRICS.md)",
    "ROUTER_METRICS_LISTEN": "a deployed router serves /metrics on loopback (docs/METRICS.md)",
}
#: The mode the template is rendered with (the role has no default for it, on purpose).
RENDER_MODE = "TESTNET"

FIELDS = {str(f.alias or name): name for name, f in config.KernelConfig.model_fields.items()}


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


DEFAULTS: dict[str, Any] = _load_yaml(ROLE / "defaults/main.yml")
SPECS: dict[str, Any] = _load_yaml(ROLE / "meta/argument_specs.yml")["argument_specs"]
OPTIONS: dict[str, Any] = SPECS["main"]["options"]


def template_keys() -> dict[str, list[str]]:
    """Env key -> the role variables its line reads, from the template source (conditional
    lines included)."""
    keys: dict[str, list[str]] = {}
    for line in ENV_TEMPLATE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if match:
            key = match.group(1)
            assert key not in keys, f"{key}: written twice by {ENV_TEMPLATE.name}"
            keys[key] = re.findall(r"(?<![\w.])(_?core_kernel_\w+)", match.group(2))
    return keys


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The env file as Ansible renders it from the role's defaults alone."""
    tmp = tmp_path_factory.mktemp("env_contract")
    out = tmp / "core_gates.env"
    playbook = tmp / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render the env file from the role's defaults",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [str(ROLE / "defaults/main.yml"), str(ROLE / "vars/main.yml")],
                    "vars": {"core_kernel_trading_mode": RENDER_MODE},
                    "tasks": [
                        {
                            "name": "Render",
                            "ansible.builtin.template": {
                                "src": str(ENV_TEMPLATE),
                                "dest": str(out),
                                "mode": "0600",
                            },
                        }
                    ],
                }
            ]
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_HOME=str(tmp / ".ansible"), ANSIBLE_LOCALHOST_WARNING="false")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            *("-i", "localhost,", "-c", "local"),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
            str(playbook),
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    values, errors = config.parse_env_file(out.read_text(encoding="utf-8"), str(out))
    assert errors == [], errors
    return values


def _same(key: str, got: Any, want: Any) -> bool:
    if isinstance(got, str) and isinstance(want, str):
        bools = TRUE_TEXTS | config.FALSE_TEXTS | {""}
        if got.strip().lower() in bools and want.strip().lower() in bools:
            return (got.strip().lower() in TRUE_TEXTS) == (want.strip().lower() in TRUE_TEXTS)
    return bool(got == want)


# --- template and model ------------------------------------------------------------------------


def test_every_key_the_template_writes_is_a_kernel_key() -> None:
    unknown = sorted(set(template_keys()) - set(FIELDS))
    assert unknown == [], f"{ENV_TEMPLATE.name} writes keys the config model does not know"


def test_every_template_line_reads_a_declared_role_variable() -> None:
    """An option (argument_specs), or a value vars/main.yml derives from options."""
    derived = _load_yaml(ROLE / "vars/main.yml") or {}
    for key, names in template_keys().items():
        assert names, f"{key}: its template line reads no core_kernel_* variable"
        for name in names:
            where = derived if name.startswith("_") else OPTIONS
            assert name in where, f"{key}: reads {name}, declared neither as option nor in vars"


def test_the_rendered_defaults_load_through_the_model(rendered: dict[str, str]) -> None:
    try:
        config.KernelConfig(**rendered)
    except Exception as exc:  # the message names the key
        pytest.fail(f"the role's defaults do not load: {exc}")


def test_role_defaults_mean_the_model_defaults_unless_a_declared_override(
    rendered: dict[str, str],
) -> None:
    model_default = config.KernelConfig()
    from_role = config.KernelConfig(**rendered)
    drift = []
    same_after_all = []
    for key, value in rendered.items():
        name = FIELDS[key]
        got, want = getattr(from_role, name), getattr(model_default, name)
        if key in ROLE_OVERRIDES:
            if _same(key, got, want):
                same_after_all.append(key)
            continue
        if not _same(key, got, want):
            drift.append(f"{key}: role default {value!r}, model default {want!r}")
    assert drift == [], "role defaults differ from the model (fix one, or add to ROLE_OVERRIDES)"
    assert same_after_all == [], "stale ROLE_OVERRIDES: the role now agrees with the model"


def test_overrides_name_keys_the_template_writes() -> None:
    assert set(ROLE_OVERRIDES) <= set(template_keys())


# --- defaults/main.yml and argument_specs ----------------------------------------------------


def test_every_role_variable_is_declared_with_a_description() -> None:
    undeclared = sorted(set(DEFAULTS) - set(OPTIONS))
    assert undeclared == [], "defaults/main.yml variables missing from meta/argument_specs.yml"
    bare = sorted(k for k, v in OPTIONS.items() if not str(v.get("description") or "").strip())
    assert bare == [], "options without a description"


# Entry points that share main's options (a YAML anchor) are checked once, as main.
@pytest.mark.parametrize(
    "entry_point", sorted(e for e in SPECS if e == "main" or SPECS[e].get("options") != OPTIONS)
)
def test_every_option_carries_the_default_of_defaults_main(entry_point: str) -> None:
    options = SPECS[entry_point].get("options") or {}
    problems = []
    for name, spec in options.items():
        if spec.get("required"):
            if name in DEFAULTS:
                problems.append(f"{name}: required, yet defaults/main.yml sets it")
            continue
        if name not in DEFAULTS:
            problems.append(f"{name}: declared, not in defaults/main.yml")
        elif "default" not in spec:
            problems.append(
                f"{name}: no default in argument_specs (defaults/main.yml: {DEFAULTS[name]!r})"
            )
        elif spec["default"] != DEFAULTS[name]:
            problems.append(
                f"{name}: specs {spec['default']!r} != defaults/main.yml {DEFAULTS[name]!r}"
            )
    assert problems == []


def _declared_elsewhere() -> set[str]:
    """Names a role template may read besides its options: filters and modules of the role."""
    names = set()
    for plugin in (ROLE / "filter_plugins").glob("*.py"):
        names |= set(re.findall(r"\"(core_kernel_\w+)\":", plugin.read_text(encoding="utf-8")))
    names |= {p.stem for p in (ROLE / "library").glob("*.py")}
    return names


def test_every_variable_a_role_template_reads_is_declared() -> None:
    known = set(OPTIONS) | _declared_elsewhere()
    for template in sorted((ROLE / "templates").glob("*.j2")):
        # (?<!\w): _core_kernel_* are the role's internal facts, not options
        used = set(re.findall(r"(?<!\w)(core_kernel_\w+)", template.read_text(encoding="utf-8")))
        assert sorted(used - known) == [], f"{template.name} reads undeclared variables"


# --- docs ----------------------------------------------------------------------------------------


def kernel_readme_table() -> dict[str, str]:
    """Key -> its default cell, from files/kernel/README.md's `| key | default | ...` table."""
    rows: dict[str, str] = {}
    in_table = False
    for line in KERNEL_README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if [c.lower() for c in cells[:2]] == ["key", "default"]:
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or len(cells) < 2 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        if keys and re.fullmatch(r"(`[A-Z][A-Z0-9_]+`,?\s*)+", cells[0]):
            for key in keys:
                rows.setdefault(key, cells[1])
    return rows


def _documented(cell: str, default: Any) -> bool:
    if default is None or default == "":
        return cell.lower().startswith("empty")
    first = cell.split()[0].strip("`") if cell.split() else ""
    try:
        return Decimal(first) == Decimal(str(default))
    except InvalidOperation:
        return first == str(default)


def test_every_model_key_is_documented_in_the_kernel_readme_with_its_default() -> None:
    table = kernel_readme_table()
    undocumented = sorted(set(FIELDS) - set(table))
    assert undocumented == [], "model keys missing from files/kernel/README.md's key table"
    unknown = sorted(set(table) - set(FIELDS) - {config.APP_REDIS_URL_KEY})
    assert unknown == [], "files/kernel/README.md documents keys the model does not know"
    defaults = config.KernelConfig()
    wrong = [
        f"{key}: README says {table[key]!r}, model default {getattr(defaults, FIELDS[key])!r}"
        for key in sorted(FIELDS)
        if not _documented(table[key], getattr(defaults, FIELDS[key]))
    ]
    assert wrong == []


def _playbook_variables() -> set[str]:
    """Variables the playbooks themselves define or read (extra-vars such as the LIVE
    confirmation): README.md may name those too."""
    text = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted((PROJECT / "playbooks").rglob("*.yml"))
    )
    return set(re.findall(r"(?<!\w)(core_kernel_\w+)", text))


def test_readme_names_only_declared_role_variables_with_their_defaults() -> None:
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"`(core_kernel_\w*[^\W_])`", text))  # not a `core_kernel_binance_*`
    stale = sorted(named - set(OPTIONS) - _playbook_variables())
    assert stale == [], "README.md names role variables nothing declares"
    # "`core_kernel_x` (50000)", "`core_kernel_x` (default 3, ...)", "`core_kernel_x`, default
    # `127.0.0.1:9478`", "`core_kernel_x` (off)": the quoted value must be the default.
    quoted = re.finditer(
        r"`(core_kernel_\w+)`\s*[(,]\s*(?:default\s+)?(`[^`]+`|-?\d+(?:\.\d+)?(?![\w.])|off\b)",
        text,
    )
    wrong = []
    for match in quoted:
        name, value = match.group(1), match.group(2).strip("`")
        if name not in DEFAULTS or re.match(r"(core_kernel|stream_recovery)_", value):
            continue
        default = DEFAULTS[name]
        if value == "off":
            ok = default in ("", None)
        else:
            try:
                ok = Decimal(value) == Decimal(str(default))
            except InvalidOperation:
                ok = value == str(default)
        if not ok:
            wrong.append(f"{name}: README.md says {value!r}, defaults/main.yml {default!r}")
    assert wrong == []
