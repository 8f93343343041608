"""Testinfra checks of the stream_recovery role after `molecule converge` (playbooks/deploy.yml).

The lab's prepare left one entry pending for the dead consumer `lab-dead-consumer`; the timer's
run of quantum-stream-recover.service must have claimed it into the execution consumer.
"""

from __future__ import annotations

import json
import re
import time

import pytest

SERVICE = "quantum-stream-recover.service"
TIMER = "quantum-stream-recover.timer"
SCRIPT = "/usr/local/bin/quantum_stream_recover.sh"
LOG_DIR = "/var/log/quantum"
LOG = f"{LOG_DIR}/stream_recover.log"
TEXTFILE_DIR = "/var/lib/quantum-metrics"
LOGROTATE = "/etc/logrotate.d/quantum-stream-recover"
ENV_FILE = "/etc/quantum/core_gates.env"
STREAM = "quantum:stream:trade.intent"
GROUP = "quantum:group:execution:trade.intent"
DEAD = "lab-dead-consumer"
MAX_EXPOSURE = 3.0


def show(host, unit: str, *props: str) -> dict[str, str]:
    """systemctl show; a property listed more than once (TimersMonotonic) keeps every line."""
    out = host.check_output("systemctl show --no-pager -p %s %s", ",".join(props), unit)
    result: dict[str, str] = {}
    for line in out.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            result[key] = f"{result[key]}\n{value}" if key in result else value
    return result


def env_value(host, key: str) -> str:
    for line in host.file(ENV_FILE).content_string.splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{key} missing from {ENV_FILE}")


def consumers(host) -> dict[str, dict[str, int]]:
    """XINFO CONSUMERS as {name: {pending, idle}} (redis-cli prints field and value lines)."""
    out = host.check_output("redis-cli --no-raw XINFO CONSUMERS %s %s", STREAM, GROUP)
    values = [re.sub(r"^(\s*\d+\)\s*)+", "", line).strip().strip('"') for line in out.splitlines()]
    values = [re.sub(r"^\(integer\)\s*", "", v) for v in values if v]
    result: dict[str, dict[str, int]] = {}
    fields: dict[str, str] = {}
    for key, value in zip(values[0::2], values[1::2], strict=True):
        if key == "name" and fields:
            result[fields["name"]] = {k: int(v) for k, v in fields.items() if k != "name"}
            fields = {}
        fields[key] = value
    if fields:
        result[fields["name"]] = {k: int(v) for k, v in fields.items() if k != "name"}
    return result


def summaries(host) -> list[dict[str, object]]:
    """The JSON summaries the service printed, oldest first (journal of the unit)."""
    out = host.check_output("journalctl --no-pager -o cat -u %s", SERVICE)
    found = []
    for raw in out.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_wrapper_script(host):
    f = host.file(SCRIPT)
    assert f.is_file and f.mode == 0o755 and f.user == "root"
    text = f.content_string
    assert text.startswith("#!/bin/sh\n#"), "shebang + ansible_managed header"
    assert "/opt/quantum/core-kernel/current/bin/core-kernel" in text
    assert 'recover --config "$config"' in text
    host.check_output("sh -n %s", SCRIPT)


def test_units_pass_systemd_analyze_verify(host):
    cmd = host.run(
        "systemd-analyze verify /etc/systemd/system/%s /etc/systemd/system/%s", SERVICE, TIMER
    )
    assert cmd.rc == 0, cmd.stderr
    assert "quantum-stream-recover" not in cmd.stderr, cmd.stderr


def test_timer_enabled_and_scheduled(host):
    # While the service runs, the next OnUnitActiveSec elapse is not known yet: poll briefly.
    for _ in range(20):
        props = show(
            host,
            TIMER,
            "UnitFileState",
            "ActiveState",
            "NextElapseUSecMonotonic",
            "LastTriggerUSec",
            "TimersMonotonic",
        )
        if props["NextElapseUSecMonotonic"] not in ("", "0", "infinity"):
            break
        time.sleep(0.5)
    assert props["UnitFileState"] == "enabled"
    assert props["ActiveState"] == "active"
    assert props["NextElapseUSecMonotonic"] not in ("", "0", "infinity"), props
    assert props["LastTriggerUSec"] not in ("", "n/a"), "the timer never fired"
    assert "OnBootUSec" in props["TimersMonotonic"] and "30s" in props["TimersMonotonic"]
    assert "OnUnitActiveUSec" in props["TimersMonotonic"] and "2min" in props["TimersMonotonic"]
    listed = host.check_output("systemctl list-timers --all --no-pager %s", TIMER)
    assert TIMER in listed


def test_service_ran_successfully_and_logged(host):
    props = show(
        host, SERVICE, "Result", "ExecMainStatus", "Type", "ExecMainStartTimestamp", "User"
    )
    assert props["Type"] == "oneshot"
    assert props["Result"] == "success", props
    assert props["ExecMainStatus"] == "0", props
    assert props["ExecMainStartTimestamp"], "the service never ran"
    assert props["User"] == "quantum-recover"
    runs = summaries(host)
    assert runs, "no JSON summary in the journal of the service"
    assert all(run["ok"] is True for run in runs[-3:]), runs[-3:]
    log = host.file(LOG)
    assert log.is_file and log.group == "quantum" and log.mode == 0o660
    text = log.content_string
    assert "RECOVER_START" in text and "RECOVER_DONE" in text


def test_log_dir(host):
    d = host.file(LOG_DIR)
    assert d.is_directory
    assert d.user == "root" and d.group == "quantum"
    assert d.mode == 0o2770


def test_stale_entry_reclaimed_by_the_timer_run(host):
    held = consumers(host)
    assert DEAD not in held or held[DEAD]["pending"] == 0, held
    # The service's own runs (the timer's; the ExecStartPre of quantum-execution logs elsewhere)
    # claimed something: the prepare's stale entry is the only one the lab creates.
    runs = summaries(host)
    assert any(int(run["reclaimed"]) >= 1 for run in runs), [r["reclaimed"] for r in runs]
    pending = host.check_output("redis-cli XPENDING %s %s - + 10", STREAM, GROUP)
    assert DEAD not in pending, pending


def test_dead_consumer_deleted_only_per_config(host):
    held = consumers(host)
    zombie_idle_ms = int(env_value(host, "ZOMBIE_IDLE_MS"))
    if DEAD in held:
        # Kept only while it is younger than ZOMBIE_IDLE_MS; it holds nothing any more.
        assert held[DEAD]["pending"] == 0
        assert held[DEAD]["idle"] < zombie_idle_ms + 130_000, (held[DEAD], zombie_idle_ms)
    else:
        assert any(DEAD in run["zombies_deleted"] for run in summaries(host))


@pytest.mark.parametrize("unit", [SERVICE])
def test_systemd_analyze_security_exposure(host, unit):
    out = host.check_output("systemd-analyze security --no-pager %s", unit)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= MAX_EXPOSURE, out


def test_service_hardening_effective_in_unit(host):
    props = show(
        host,
        SERVICE,
        "ProtectSystem",
        "ReadWritePaths",
        "NoNewPrivileges",
        "PrivateTmp",
        "CapabilityBoundingSet",
        "RestrictAddressFamilies",
        "IPAddressDeny",
        "IPAddressAllow",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
        "UMask",
        "EnvironmentFiles",
        "After",
    )
    assert props["ProtectSystem"] == "strict"
    # the log and the sweep's textfile directory, nothing else
    assert props["ReadWritePaths"].split() == [LOG_DIR, TEXTFILE_DIR]
    assert props["NoNewPrivileges"] == "yes"
    assert props["PrivateTmp"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert set(props["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert props["IPAddressDeny"] in ("0.0.0.0/0 ::/0", "::/0 0.0.0.0/0")
    assert "127.0.0.0/8" in props["IPAddressAllow"]
    assert props["MemoryDenyWriteExecute"] == "yes"
    assert props["UMask"] == "0007"
    # the application's files first (for the mode), then the kernel's (required), then its
    # secrets file (optional)
    files = [line.split(" ")[0] for line in props["EnvironmentFiles"].splitlines()]
    assert files[0] == "/etc/quantum/quantum.env", files
    assert files[-2:] == [ENV_FILE, "/etc/quantum/core_kernel.secrets.env"], files
    assert f"{ENV_FILE} (ignore_errors=no)" in props["EnvironmentFiles"]
    assert "redis-server.service" in props["After"].split()


def test_logrotate_rule_valid(host):
    f = host.file(LOGROTATE)
    assert f.is_file and f.user == "root" and f.mode == 0o644
    assert LOG in f.content_string
    cmd = host.run("logrotate -d %s", LOGROTATE)
    assert cmd.rc == 0, cmd.stderr
    assert "error:" not in (cmd.stdout + cmd.stderr), cmd.stdout + cmd.stderr
