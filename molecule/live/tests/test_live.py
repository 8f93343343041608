"""The live scenario: a LIVE lab host deployed with the confirmation naming it.

Refusals are proven by running playbooks/deploy.yml again from here (controller side) against
the instance, with the project's real inventories' group_vars and without the confirmation:
the run must fail in preflight with one line saying why, and the host (files, unit states,
Redis) must be exactly as before.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PROJECT / "molecule"))
from controller import run_playbook  # noqa: E402

KERNEL = "/opt/quantum/core-kernel/current/bin/core-kernel"
ENV_FILE = "/etc/quantum/core_gates.env"
SERVICE = "quantum-stream-recover.service"
STREAM = "quantum:stream:trade.intent"
GROUP = "quantum:group:execution:trade.intent"
DEAD = "lab-dead-consumer"
EVIDENCE_ROOT = "/var/lib/quantum/evidence"
INTENT = {
    "symbol": "BTCUSDT",
    "side": "BUY",
    "qty": "0.0001",
    "price": "60000",
    "expected_move_usd": "1.5",
    "tp": "61500",
    "sl": "59500",
    "model": "NHiTS",
    "regime": "TREND",
    "leverage": "1",
    "trace_id": "live-audit-0001",
}


def run_deploy(
    tmp_path: Path, instance: str, inventory: str, *extra: str
) -> tuple[int, str, float]:
    """deploy.yml against the instance with inventory/<inventory>/group_vars and no host_vars."""
    return run_playbook(tmp_path, instance, inventory, "deploy.yml", *extra)


def refusal_line(output: str) -> str:
    match = re.search(r"preflight refused on [^\n]*(?:\n\s+[^\n]*)*", output)
    assert match, output[-3000:]
    # The yaml result callback folds long messages; unfold to the one line the task failed with.
    return " ".join(part.strip() for part in match.group(0).splitlines()).rstrip("'\"")


def host_state(host) -> dict[str, object]:
    """Files/units (rollback scenario's snapshot script), evidence dirs, Redis stream state."""
    snapshot = json.loads(host.check_output("python3 /root/snapshot.py"))
    evidence = host.check_output("ls -1A %s 2>/dev/null || true", EVIDENCE_ROOT)
    pending = host.check_output("redis-cli XPENDING %s %s - + 100", STREAM, GROUP)
    # XPENDING detail lines: id, consumer, idle ms, deliveries; idle grows by itself, drop it.
    rows = pending.splitlines()
    stable = [r for i, r in enumerate(rows) if i % 4 != 2]
    stream_len = host.check_output("redis-cli XLEN %s", STREAM)
    return {"snapshot": snapshot, "evidence": evidence, "pending": stable, "xlen": stream_len}


def snapshot_diff(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """Which entries of two snapshots differ, one line each (a failing == of the whole
    snapshot prints an unreadable truncated blob)."""
    out = []
    for part in before.keys() | after.keys():
        was, now = before.get(part, {}), after.get(part, {})
        for key in sorted(was.keys() | now.keys()):
            if was.get(key) != now.get(key):
                out.append(f"{part} {key}: {was.get(key)} -> {now.get(key)}")
    return out


@pytest.fixture(scope="module")
def instance(host) -> str:
    return str(host.backend.name)


def test_mode_is_live_and_not_enforcing(host):
    data = json.loads(host.check_output("%s mode --json --config %s", KERNEL, ENV_FILE))
    assert data["mode"] == "LIVE", data
    assert data["enforce"] is False and data["may_mutate"] is False, data
    assert data["conflict"] is False, data


def test_gates_are_audit_only(host):
    # Under the host's detected mode (no --mode): a failing intent is reported, not held.
    line = json.dumps(INTENT)
    out = host.check_output("echo %s | %s evaluate --config %s", line, KERNEL, ENV_FILE)
    result = json.loads(out.splitlines()[0])
    assert result["mode"] == "LIVE", result
    assert "MIN_NOTIONAL" in result["reasons"], result
    assert result["enforced"] is False, result
    assert result["verdict"] == "PASS", result


def test_env_file_leaves_the_mode_to_the_application(host):
    """Issue 12 items 1, 6: the kernel's file carries no mode key; it names the application's
    env files, from which commands outside the services read only the mode."""
    text = host.file(ENV_FILE).content_string
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and line[0] != "#"}
    assert not {"TRADING_MODE", "BINANCE_TESTNET", "USE_BINANCE_TESTNET"} & keys, text
    assert "\nAPPLICATION_ENV_FILES=/etc/quantum/quantum.env" in text, text
    assert "# Deployed for LIVE," in text


APP_ENV_FILES = ("/etc/quantum/quantum.env", "/etc/quantum/quantum-exchange.env")
STANDINS = ("quantum-execution", "quantum-ai-strategy-router")


def env_file_values(host, path: str) -> dict[str, str]:
    text = host.file(path).content_string
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.mark.parametrize("unit", STANDINS)
def test_application_environment_is_untouched(host, unit):
    """Every variable of the application's own env files keeps its value in the running
    service after the deploy (issue 12 item 1: exchange keys, app-only keys, mode keys)."""
    app: dict[str, str] = {}
    for path in APP_ENV_FILES:
        app.update(env_file_values(host, path))
    assert {"BINANCE_API_KEY", "BINANCE_API_SECRET", "REDIS_URL", "QUANTUM_APP_ONLY"} <= app.keys()
    main_pid = int(host.check_output("systemctl show -p MainPID --value %s.service", unit))
    record = json.loads(host.file(f"/run/quantum-lab/{unit}.env.json").content_string)
    assert record["pid"] == main_pid, "the environment record is not the running process's"
    env = record["env"]
    # The process started with the kernel's drop-in: without this the check below is vacuous.
    kernel = env_file_values(host, ENV_FILE)
    assert env.get("MIN_NOTIONAL_USD") == kernel["MIN_NOTIONAL_USD"], env
    changed = {key: (want, env.get(key)) for key, want in app.items() if env.get(key) != want}
    assert not changed, f"the deploy changed the application's environment: {changed}"
    # The kernel's file carries no exchange keys of its own (none were set in the inventory)
    # and its Redis under its own key.
    assert not {"BINANCE_API_KEY", "BINANCE_API_SECRET", "BINANCE_FUTURES_URL"} & kernel.keys()
    assert "REDIS_URL" not in kernel and "CORE_KERNEL_REDIS_URL" in kernel


def test_recovery_reports_without_changing_redis(host):
    before = host_state(host)
    assert any(DEAD in row for row in before["pending"]), "the prepare's stale entry is gone"
    host.check_output("systemctl start %s", SERVICE)
    props = host.check_output("systemctl show -p Result --value %s", SERVICE).strip()
    assert props == "success"
    after = host_state(host)
    assert after["pending"] == before["pending"], (before["pending"], after["pending"])
    assert after["xlen"] == before["xlen"]
    runs = [
        json.loads(raw.strip())
        for raw in host.check_output("journalctl --no-pager -o cat -u %s", SERVICE).splitlines()
        if raw.strip().startswith("{")
    ]
    assert runs, "no recovery summary in the journal"
    for run in runs:
        assert run["mode"] == "LIVE" and run["acted"] is False, run
        assert run["reclaimed"] == 0 and run["dead_lettered"] == 0 and run["zombies_deleted"] == []
    # The last run saw the stale entry and only reported it.
    assert runs[-1]["would_reclaim"] >= 1, runs[-1]
    log = host.file("/var/log/quantum/stream_recover.log").content_string
    assert "mode=LIVE" in log


def test_live_run_without_confirmation_is_refused_and_changes_nothing(host, instance, tmp_path):
    before = host_state(host)
    rc, output, seconds = run_deploy(tmp_path, instance, "live")
    after = host_state(host)
    print(f"refusal (no confirmation) took {seconds:.1f} s")
    assert rc != 0, output[-3000:]
    line = refusal_line(output)
    assert f"preflight refused on {instance}: LIVE run not confirmed" in line, line
    assert f"core_kernel_confirm_live={instance}" in line, line
    assert "changed=0" in output, output[-1500:]
    assert after == before


def test_live_run_with_wrong_confirmation_is_refused(host, instance, tmp_path):
    before = host_state(host)
    rc, output, _ = run_deploy(tmp_path, instance, "live", "-e", "core_kernel_confirm_live=other")
    assert rc != 0
    line = refusal_line(output)
    assert "LIVE run not confirmed" in line and "(got other)" in line, line
    assert host_state(host) == before


def test_testnet_inventory_against_live_host_is_refused(host, instance, tmp_path):
    before = host_state(host)
    rc, output, seconds = run_deploy(tmp_path, instance, "testnet")
    after = host_state(host)
    print(f"refusal (mode mismatch) took {seconds:.1f} s")
    assert rc != 0, output[-3000:]
    line = refusal_line(output)
    assert (
        f"preflight refused on {instance}: inventory mode TESTNET does not match the host mode LIVE"
        in line
    ), line
    assert "/etc/quantum/quantum.env:TRADING_MODE=LIVE" in line, line
    assert "changed=0" in output, output[-1500:]
    assert after == before


CANARY = "Canary-Redis-Pw-51c9"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # the lab's Redis has no password: AUTH with one is refused like a wrong one
        (f"redis://:{CANARY}@127.0.0.1:6379/0", "refused the credentials of core_kernel_redis_url"),
        ("redis://127.0.0.1:6379/99", "has no database 99 (wrong database in"),
        ("redis://127.0.0.1:6390/0", "Redis unreachable at 127.0.0.1:6390 within"),
    ],
    ids=["auth-failed", "wrong-database", "unreachable"],
)
def test_redis_refusals_are_distinct_say_why_and_change_nothing(
    host, instance, tmp_path, url, says
):
    """Issue 12 item 3: preflight talks to Redis as the kernel will, before any change; the
    password in the URL appears nowhere in the run's output, even at -vvv."""
    before = host_state(host)
    rc, output, _ = run_deploy(
        tmp_path,
        instance,
        "live",
        "-vvv",
        "-e",
        f"core_kernel_confirm_live={instance}",
        "-e",
        f"core_kernel_redis_url={url}",
    )
    assert rc != 0, output[-3000:]
    line = refusal_line(output)
    assert line.startswith(f"preflight refused on {instance}: Redis"), line
    assert says in line, line
    assert CANARY not in output
    assert host_state(host) == before


def trading_state(host) -> str:
    out = host.check_output("%s state --json --config %s", KERNEL, ENV_FILE)
    return str(json.loads(out)["state"])


def test_halt_holds_in_live_too_and_a_live_resume_needs_the_confirmation(host, instance, tmp_path):
    """Issue 14: the operator's state is enforced in every mode; resume of a LIVE host needs
    the LIVE deploy's confirmation (halt and reduce do not: stopping must never wait)."""
    reason = "core_kernel_state_reason='molecule: live halt'"
    rc, output, _ = run_playbook(tmp_path, instance, "live", "halt.yml", "-e", reason)
    assert rc == 0, output[-3000:]
    try:
        assert trading_state(host) == "HALTED"
        line = json.dumps({**INTENT, "trace_id": "live-halted-0001", "qty": "0.01"})
        out = host.check_output(
            "echo %s | %s evaluate --config %s --redis-url %s",
            line,
            KERNEL,
            ENV_FILE,
            "redis://127.0.0.1:6379/0",
        )
        result = json.loads(out.splitlines()[0])
        assert result["mode"] == "LIVE", result
        assert result["verdict"] == "HOLD" and result["reasons"][0] == "TRADING_HALTED", result

        unconfirmed = "core_kernel_state_reason='molecule: resume, unconfirmed'"
        rc, output, _ = run_playbook(tmp_path, instance, "live", "resume.yml", "-e", unconfirmed)
        assert rc != 0
        # the yaml callback folds long messages: compare with whitespace collapsed
        unfolded = " ".join(output.split())
        assert f"LIVE host: resume needs -e core_kernel_confirm_live={instance}" in unfolded
        assert trading_state(host) == "HALTED"
    finally:
        rc, output, _ = run_playbook(
            tmp_path,
            instance,
            "live",
            "resume.yml",
            "-e",
            "core_kernel_state_reason='molecule: resume, confirmed'",
            "-e",
            f"core_kernel_confirm_live={instance}",
        )
    assert rc == 0, output[-3000:]
    assert trading_state(host) == "ACTIVE"


def set_application_mode(host, mode: str) -> None:
    """The operator's own step of a mode switch: the application's file says the new mode."""
    testnet = "true" if mode == "TESTNET" else "false"
    body = f"TRADING_MODE={mode}\nBINANCE_TESTNET={testnet}\nUSE_BINANCE_TESTNET={testnet}\n"
    host.run("printf %s %s > /etc/quantum/quantum.env", "%s", body)
    assert host.file("/etc/quantum/quantum.env").content_string == body


def kernel_mode(host) -> dict[str, object]:
    return json.loads(host.check_output("%s mode --json --config %s", KERNEL, ENV_FILE))


def running_mode(host, unit: str = "quantum-execution") -> str | None:
    record = json.loads(host.file(f"/run/quantum-lab/{unit}.env.json").content_string)
    return record["env"].get("TRADING_MODE")


def test_a_live_host_switches_to_testnet_and_back(host, instance, tmp_path):
    """Issue 12 item 6, the documented procedure (README "Switching a host's mode"): the
    application's own file changes, then the deploy with the matching inventory (and, for LIVE,
    the confirmation) restarts the services into that mode and proves it. The kernel's env file
    never keeps a host in the mode it was deployed for."""
    original = host.file("/etc/quantum/quantum.env").content_string
    try:
        set_application_mode(host, "TESTNET")
        # the kernel already follows the application's file (nothing of its own holds the mode)
        assert kernel_mode(host)["mode"] == "TESTNET"
        rc, output, seconds = run_deploy(tmp_path, instance, "lab")
        print(f"switch LIVE -> TESTNET deploy took {seconds:.1f} s")
        assert rc == 0, output[-3000:]
        assert running_mode(host) == "TESTNET", "the services were not restarted into TESTNET"
        assert "# Deployed for TESTNET," in host.file(ENV_FILE).content_string
        latest = f"{EVIDENCE_ROOT}/latest"
        proof = json.loads(host.file(f"{latest}/proof/gate_proof.json").content_string)
        assert proof["ok"] is True, proof
        # the host's commands now enforce: the same failing intent is held
        line = json.dumps({**INTENT, "trace_id": "switch-testnet-0001"})
        out = host.check_output("echo %s | %s evaluate --config %s", line, KERNEL, ENV_FILE)
        result = json.loads(out.splitlines()[0])
        assert result["mode"] == "TESTNET" and result["verdict"] == "HOLD", result
        assert result["enforced"] is True, result
        run = json.loads(host.file(f"{latest}/logs/run.json").content_string)
        assert run["host_mode"] == "TESTNET", run
        # a LIVE inventory is now refused: the host really is TESTNET
        confirmed = f"core_kernel_confirm_live={instance}"
        rc, output, _ = run_deploy(tmp_path, instance, "live", "-e", confirmed)
        assert rc != 0 and "does not match the host mode TESTNET" in refusal_line(output)

        set_application_mode(host, "LIVE")
        rc, output, _ = run_deploy(tmp_path, instance, "live")
        assert rc != 0 and "LIVE run not confirmed" in refusal_line(output)
        rc, output, seconds = run_deploy(
            tmp_path, instance, "live", "-e", f"core_kernel_confirm_live={instance}"
        )
        print(f"switch TESTNET -> LIVE deploy took {seconds:.1f} s")
        assert rc == 0, output[-3000:]
        assert running_mode(host) == "LIVE"
        mode = kernel_mode(host)
        assert mode["mode"] == "LIVE" and mode["enforce"] is False, mode
    finally:
        host.run("printf %s %s > /etc/quantum/quantum.env", "%s", original)


def test_a_failed_deploy_names_the_failing_unit_and_rolls_back(host, instance, tmp_path):
    """Issue 12 item 3: a failure after the change names its root cause - the unit that did not
    come back and the last line it logged - the host is restored as it was (the rollback's own
    verification included: a oneshot the broken deploy left failed is reset, not reported), and
    the report of the rolled-back run states the host's real mode. Last in the file: the host
    ends as the earlier tests left it (deployed LIVE), which the snapshot comparison proves."""
    before = host_state(host)
    failed_units = "systemctl list-units --failed --plain --no-legend --no-pager"
    failed_before = host.check_output(failed_units)
    marker = "kernel-test: deliberate start failure"
    failing = f"/bin/sh -c 'echo {marker} >&2; exit 1'"
    rc, output, seconds = run_deploy(
        tmp_path,
        instance,
        "live",
        "-e",
        f"core_kernel_confirm_live={instance}",
        "-e",
        json.dumps({"core_kernel_exec_start_pre": failing}),  # key=value would split it
    )
    print(f"failed deploy with rollback took {seconds:.1f} s")
    assert rc != 0, output[-3000:]
    flat = " ".join(output.split())  # the yaml callback folds long messages
    assert "deploy failed and was rolled back" in flat, output[-3000:]
    assert "rollback incomplete" not in flat, output[-3000:]
    # the root cause: the failing unit, then its own last journal line, before the task's error
    cause = re.search(r"(quantum-execution\.service \S+ \(\S+\)): ([^;<]*)", flat)
    assert cause, output[-3000:]
    assert marker in cause.group(2), cause.group(0)
    after = host_state(host)
    # The recovery log is the one file that keeps this run's lines: the sweeps that ran during
    # the deploy appended to it (it existed before, so it is not the deploy's to take away).
    log = "/var/log/quantum/stream_recover.log"
    kept = {k: v for k, v in before["snapshot"]["files"][log].items() if k != "sha256"}
    assert {k: v for k, v in after["snapshot"]["files"][log].items() if k != "sha256"} == kept
    for state in (before, after):
        state["snapshot"]["files"].pop(log)
    assert snapshot_diff(before["snapshot"], after["snapshot"]) == []
    assert after["pending"] == before["pending"] and after["xlen"] == before["xlen"]
    # the oneshot sweep the broken deploy failed is no longer failed (systemd's memory too)
    assert host.check_output(failed_units) == failed_before
    # The controller's report of this run: rolled back, and the mode the host really has.
    report = (PROJECT / "evidence" / instance / "latest/ACTIVATION_REPORT.md").read_text()
    assert "| Status | **ROLLED BACK**" in report, report[:3000]
    assert marker in report, report[:3000]
    assert "| Mode | **LIVE** (inventory: LIVE;" in report, report[:3000]
    assert "| Host mode (the application's own evidence) | **LIVE**" in report, report[:3000]
    assert kernel_mode(host)["mode"] == "LIVE"
    # On the host: the rollback report says the verification found everything as recorded.
    latest = host.check_output("readlink -f %s/latest", EVIDENCE_ROOT).strip()
    rb = host.check_output("cat %s/ROLLBACK_REPORT_*.md", latest)
    assert "**OK** - files and unit states equal the recorded before state" in rb, rb
    print("rollback changes:", [line for line in rb.splitlines() if line.startswith("- ")])


def test_restore_resets_a_oneshot_the_deploy_left_failed_and_keeps_one_failed_before(host):
    """The finding that took the test above out: the oneshot sweep ended `failed` during a
    broken deploy and the rollback's verification called that "incomplete". Here the failure
    is made on purpose (a runtime drop-in, outside every recorded file) after the evidence of
    the rolled-back run above recorded the sweep `inactive`; the same restore the rollback
    runs must reset it, then - once the evidence records it failed - leave it failed."""
    latest = host.check_output("readlink -f %s/latest", EVIDENCE_ROOT).strip()
    restore = f"python3 -I -B {latest}/restore.py {latest}"
    dropin = f"/run/systemd/system/{SERVICE}.d"
    manifest = f"{latest}/backup/manifest.json"
    recorded = json.loads(host.file(manifest).content_string)
    assert recorded["units"][SERVICE]["ActiveState"] == "inactive", recorded["units"][SERVICE]

    def fail_the_sweep() -> None:
        host.check_output("mkdir -p %s", dropin)
        host.check_output(
            "printf '[Service]\\nExecStartPre=/bin/false\\n' > %s/99-fail.conf", dropin
        )
        host.check_output("systemctl daemon-reload")
        host.run("systemctl start %s", SERVICE)
        host.check_output("rm -r %s && systemctl daemon-reload", dropin)
        state = host.check_output("systemctl show -p ActiveState --value %s", SERVICE)
        assert state.strip() == "failed"

    try:
        fail_the_sweep()
        run = host.run(restore)
        assert run.rc == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["ok"] is True and result["unit_mismatch"] == [], result
        assert f"reset-failed {SERVICE}" in result["actions"], result["actions"]
        state = host.check_output("systemctl show -p ActiveState --value %s", SERVICE)
        assert state.strip() == "inactive"

        # A unit that was already failed when the evidence was recorded is the host's own
        # state: the restore leaves it failed (and says the host matches the record).
        host.check_output("cp -p %s %s.orig", manifest, manifest)
        recorded["units"][SERVICE]["ActiveState"] = "failed"
        host.check_output("printf %%s %s > %s", json.dumps(recorded), manifest)
        fail_the_sweep()
        run = host.run(restore)
        assert run.rc == 0, run.stderr
        result = json.loads(run.stdout)
        assert not any("reset-failed" in a for a in result["actions"]), result["actions"]
        state = host.check_output("systemctl show -p ActiveState --value %s", SERVICE)
        assert state.strip() == "failed"
    finally:
        host.run("rm -rf %s && systemctl daemon-reload", dropin)
        host.run("test -f %s.orig && mv %s.orig %s", manifest, manifest, manifest)
        host.run("systemctl reset-failed %s", SERVICE)
