"""Testinfra checks of the core_kernel role after `molecule converge` (playbooks/deploy.yml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ENV_FILE = "/etc/quantum/core_gates.env"
KERNEL = "/opt/quantum/core-kernel/current/bin/core-kernel"
EVIDENCE = "/var/lib/quantum/evidence/latest"
APP = "/home/qt/quantum_trader"
DROPIN = "20-core-kernel.conf"
PROJECT = Path(__file__).resolve().parents[3]

ORIGINAL_VALUES = {
    "MIN_NOTIONAL_USD": "25",
    "EDGE_MULTIPLIER": "3.0",
    "MIN_HOLD_SECONDS": "300",
    "MAX_TRADES_10MIN": "3",
    "MIN_R_TREND": "2.5",
    "MIN_R_RANGE": "1.8",
    "ZOMBIE_IDLE_MS": "3600000",
    "STALE_IDLE_MS": "60000",
}


def show(host, unit: str, *props: str) -> dict[str, str]:
    out = host.check_output("systemctl show --no-pager -p %s %s", ",".join(props), unit)
    # A property with several values (EnvironmentFiles=, one per file) comes as repeated lines.
    values: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return {key: "\n".join(vals) for key, vals in values.items()}


def env_values(host) -> dict[str, str]:
    text = host.file(ENV_FILE).content_string
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_env_file_mode_owner_and_values(host):
    f = host.file(ENV_FILE)
    assert f.is_file
    assert f.mode == 0o640
    assert f.user == "root"
    assert f.group == "quantum"
    values = env_values(host)
    for key, want in ORIGINAL_VALUES.items():
        assert values.get(key) == want, f"{key}={values.get(key)!r}, want {want!r}"
    assert f.content_string.startswith("#"), "ansible_managed header missing"


def test_env_file_leaves_the_applications_keys_alone(host):
    # Written even empty, they would override the application's own values (the drop-in's
    # EnvironmentFile= comes after the unit's); the inventory sets none for the kernel.
    keys = env_values(host).keys()
    assert not {"BINANCE_API_KEY", "BINANCE_API_SECRET", "BINANCE_FUTURES_URL"} & keys
    # Nor the application's REDIS_URL: the kernel's Redis has a key of its own.
    assert "REDIS_URL" not in keys
    # Nor the mode (issue 12 items 1, 6): the application declares it; the kernel names the
    # application's files it reads the mode keys from.
    assert not {"TRADING_MODE", "BINANCE_TESTNET", "USE_BINANCE_TESTNET"} & keys
    assert env_values(host)["APPLICATION_ENV_FILES"].split(",")[0] == "/etc/quantum/quantum.env"
    assert env_values(host)["CORE_KERNEL_REDIS_URL"] == "redis://127.0.0.1:6379/0"


def test_env_file_passes_check_config(host):
    host.check_output("%s check-config --config %s", KERNEL, ENV_FILE)


APP_UNITS = ["quantum-execution.service", "quantum-ai-strategy-router.service"]


@pytest.mark.parametrize("unit", APP_UNITS)
def test_dropins_loaded_and_effective(host, unit):
    props = show(host, unit, "DropInPaths", "EnvironmentFiles", "Restart", "RestartUSec")
    assert f"/etc/systemd/system/{unit}.d/{DROPIN}" in props["DropInPaths"].split()
    env_files = [line.split(" (", 1)[0] for line in props["EnvironmentFiles"].splitlines()]
    assert ENV_FILE in env_files, props["EnvironmentFiles"]
    assert props["Restart"] == "always"
    assert props["RestartUSec"] == "3s"


def test_execution_runs_recovery_before_start(host):
    props = show(host, "quantum-execution.service", "ExecStartPre", "ActiveState")
    assert "path=/usr/local/bin/quantum_stream_recover.sh" in props["ExecStartPre"]
    assert props["ActiveState"] == "active"
    router = show(host, "quantum-ai-strategy-router.service", "ExecStartPre", "ActiveState")
    assert "quantum_stream_recover.sh" not in router.get("ExecStartPre", "")
    assert router["ActiveState"] == "active"


def test_services_see_the_gate_config(host):
    props = show(host, "quantum-execution.service", "MainPID", "User")
    assert props["MainPID"] != "0"
    # Read as the service's own user: root inside the container lacks CAP_SYS_PTRACE.
    user = props.get("User") or "root"
    out = host.check_output("runuser -u %s -- cat /proc/%s/environ", user, props["MainPID"])
    environ = out.split("\0")
    assert "MIN_NOTIONAL_USD=25" in environ
    assert "TRADING_MODE=TESTNET" in environ


def test_release_switched_atomically_via_symlink(host):
    current = host.file("/opt/quantum/core-kernel/current")
    assert current.is_symlink
    assert current.linked_to.startswith("/opt/quantum/core-kernel/releases/")
    assert host.file(current.linked_to + "/.installed").is_file
    assert host.check_output("%s version", KERNEL).startswith("core-kernel ")


def test_gate_proof_on_the_host(host):
    result = host.run("%s gate-proof --json --config %s", KERNEL, ENV_FILE)
    assert result.rc == 0, result.stdout + result.stderr
    proof = json.loads(result.stdout)
    assert proof["ok"] is True
    assert proof["passed"] == proof["total"] >= 8


def test_shim_import_works_in_the_app_tree_as_the_service_user(host):
    shim = host.file(f"{APP}/services/profit_gate_kernel.py")
    assert shim.is_file
    assert shim.user == "qt"
    code = (
        "from services.profit_gate_kernel import profit_gate, GateVerdict, record_trade; "
        "import core_kernel; print(GateVerdict.HOLD.value, core_kernel.__file__)"
    )
    out = host.check_output("cd %s && runuser -u qt -- python3 -c %s", APP, code)
    verdict, path = out.split()
    assert verdict == "HOLD"
    assert path.startswith("/opt/quantum/core-kernel/current/")


def test_shim_gives_the_seed_answer(host):
    code = (
        "from services.profit_gate_kernel import profit_gate, GateVerdict; "
        "v, r, c = profit_gate(symbol='BTCUSDT', side='BUY', qty=0.0001, price=100000, "
        "expected_move_usd=500, tp=101000, sl=99600, model='NHiTS', regime='TREND', "
        "leverage=1, trace_id='molecule-shim-1'); print(v.value, r.value)"
    )
    out = host.check_output("cd %s && runuser -u qt -- python3 -c %s", APP, code)
    assert out.split() == ["HOLD", "MIN_NOTIONAL"]


def test_evidence_directory_complete(host):
    latest = host.file(EVIDENCE)
    assert latest.is_symlink
    target = latest.linked_to
    assert target.startswith("/var/lib/quantum/evidence/core_kernel_")
    for sub in ("before", "backup", "after", "proof", "logs"):
        assert host.file(f"{target}/{sub}").is_directory, sub
    rollback = host.file(f"{target}/ROLLBACK.sh")
    assert rollback.mode == 0o700
    host.check_output("bash -n %s/ROLLBACK.sh", target)
    manifest = json.loads(host.file(f"{target}/backup/manifest.json").content_string)
    paths = {f["path"] for f in manifest["files"]}
    assert ENV_FILE in paths
    assert f"{APP}/services/profit_gate_kernel.py" in paths
    assert "/usr/local/bin/quantum_stream_recover.sh" in paths
    for rec in manifest["files"]:
        if rec["existed"] and rec["type"] == "file":
            copy = host.file(f"{target}/backup/{rec['backup']}")
            assert copy.sha256sum == rec["sha256"], rec["path"]
    assert "quantum-stream-recover.timer" in manifest["units"]
    proof = json.loads(host.file(f"{target}/proof/gate_proof.json").content_string)
    assert proof["ok"] is True
    recovery = json.loads(host.file(f"{target}/proof/recovery.json").content_string)
    assert recovery["ok"] is True
    before = json.loads(host.file(f"{target}/before/unit_states.json").content_string)
    assert before["quantum-execution.service"]["ActiveState"] == "active"
    assert host.file(f"{target}/before/stream_health.json").size > 0
    assert host.file(f"{target}/after/unit_properties.json").size > 0


def test_report_shows_the_trading_state_and_the_limits_in_force(host):
    """Issue 14 item 6: the activation report (controller side) names the state and limits."""
    target = host.file(EVIDENCE).linked_to
    state = json.loads(host.file(f"{target}/after/trading_state.json").content_string)
    assert state["state"] in {"ACTIVE", "HALTED", "REDUCING"}, state
    config = json.loads(host.file(f"{target}/after/config.json").content_string)["config"]
    assert config["MAX_NOTIONAL_USD"] == "50000" and config["MAX_LEVERAGE"] == "20", config
    report = PROJECT / "evidence" / host.backend.name / "latest" / "ACTIVATION_REPORT.md"
    text = report.read_text()
    assert "## Trading state and limits" in text
    assert f"Trading state: **{state['state']}**" in text
    assert "| `MAX_NOTIONAL_USD` | 50000 | holds entries |" in text
    assert "| `MAX_LEVERAGE` | 20 | holds entries |" in text
    assert "| `PRICE_COLLAR_PCT` | off | - |" in text
    assert "| `MAX_DRAWDOWN_PCT` | 10 | trips to REDUCING (quantum-protect) |" in text
    assert "| `DAILY_LOSS_LIMIT_USD` | off | - |" in text


def test_no_index_access_needed_on_the_host(host):
    # The release was installed from the copied wheelhouse: every wheel pip used is there.
    current = host.file("/opt/quantum/core-kernel/current").linked_to
    freeze = host.check_output("%s/bin/python -m pip freeze --disable-pip-version-check", current)
    assert "quantum-core-kernel" in freeze
    wheels = host.check_output("ls /opt/quantum/core-kernel/wheelhouse/*/")
    assert "quantum_core_kernel-" in wheels


def test_old_releases_pruned_after_the_proven_deploy(host):
    # prepare.yml left three dated releases (and wheelhouses) and a non-release directory;
    # core_kernel_keep_releases=3 keeps the new current release and the two newest old ones.
    current = host.file("/opt/quantum/core-kernel/current").linked_to.rsplit("/", 1)[1]
    releases = set(host.file("/opt/quantum/core-kernel/releases").listdir())
    assert releases == {current, "0.0.3-cccccccccccc", "0.0.2-bbbbbbbbbbbb", "notes"}
    wheelhouses = set(host.file("/opt/quantum/core-kernel/wheelhouse").listdir())
    assert "aaaaaaaaaaaa" not in wheelhouses
    assert {"bbbbbbbbbbbb", "cccccccccccc", current.rsplit("-", 1)[1]} <= wheelhouses
    pruned = host.check_output(
        "cat $(ls -d /var/lib/quantum/evidence/core_kernel_* | head -1)/after/pruned_releases.txt"
    )
    assert pruned.split() == ["0.0.1-aaaaaaaaaaaa"]
