"""The operator's trading state on the lab host, through the operator's playbooks (issue 14).

playbooks/halt.yml, reduce.yml and resume.yml run from the controller against the instance
with inventory/lab's group_vars, as an operator runs them; intents then go the whole way
(kernel publish -> stream -> the execution worker -> the fake exchange) and the tests read what
the worker answered and what reached the exchange. The tests run in file order and share the
state; the module leaves the host ACTIVE whatever happens.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import pytest
from lab_pipeline import BIN, WORKER, helper, intent, wait_state

PROJECT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PROJECT / "molecule"))
from controller import run_playbook  # noqa: E402

KERNEL = f"{BIN}/core-kernel"
ENV_FILE = "/etc/quantum/core_gates.env"
STATE_HOLDS = {"TRADING_HALTED", "REDUCING_ONLY"}


@pytest.fixture(scope="module")
def instance(host) -> str:
    return str(host.backend.name)


@pytest.fixture(scope="module")
def playbook(instance, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trading-state")

    def run(name: str, *extra: str) -> tuple[int, str, float]:
        rc, out, seconds = run_playbook(tmp, instance, "lab", name, *extra)
        print(f"{name} {' '.join(extra)}: rc={rc} in {seconds:.1f} s")
        return rc, out, seconds

    return run


@pytest.fixture(scope="module", autouse=True)
def active_afterwards(host):
    for unit in ("quantum-fake-binance.service", WORKER):
        assert host.service(unit).is_running, unit
    yield
    host.run("%s resume --reason %s --config %s", KERNEL, "molecule: leave it trading", ENV_FILE)


def state(host) -> dict:
    return json.loads(
        host.check_output("%s state --json --history 10 --config %s", KERNEL, ENV_FILE)
    )


def recap_changed(output: str) -> int:
    match = re.search(r"\bchanged=(\d+)", output)
    assert match, output[-2000:]
    return int(match.group(1))


def send(host, trace_id: str, **fields: object) -> dict:
    assert helper(host, "publish", intent(trace_id, **fields)) is not None
    got = wait_state(host, trace_id)
    assert len(got["results"]) == 1, got
    return got


def exit_fields() -> dict[str, object]:
    # A reduce-only exit carries only what an exit needs; no entry gate applies to it.
    return {"side": "SELL", "reduce_only": True}


def tid(label: str) -> str:
    return f"mol-ts-{label}-{uuid.uuid4().hex[:10]}"


def test_a_state_change_without_a_reason_is_refused_and_changes_nothing(host, playbook):
    before = state(host)
    rc, out, _ = playbook("halt.yml")
    assert rc != 0
    assert "core_kernel_state_reason" in out, out[-2000:]
    assert state(host) == before


def test_halt_holds_every_new_intent_and_nothing_reaches_the_exchange(host, playbook):
    rc, out, _ = playbook("halt.yml", "-e", "core_kernel_state_reason='molecule: halt'")
    assert rc == 0, out[-3000:]
    assert recap_changed(out) == 1
    now = state(host)
    assert now["state"] == "HALTED", now
    assert now["source"] == "playbook" and now["reason"] == "molecule: halt", now
    for label, fields in (("entry", {}), ("exit", exit_fields())):
        got = send(host, tid(f"halted-{label}"), **fields)
        result = got["results"][0]
        assert result["status"] == "gate_blocked", result
        assert result["reasons"].split(",")[0] == "TRADING_HALTED", result
        assert got["orders"] == [], got


def test_halt_again_and_reduce_in_check_mode_change_nothing(host, playbook):
    before = state(host)
    rc, out, _ = playbook("halt.yml", "-e", "core_kernel_state_reason='molecule: again'")
    assert rc == 0, out[-3000:]
    assert recap_changed(out) == 0
    rc, out, _ = playbook(
        "reduce.yml", "--check", "-e", "core_kernel_state_reason='molecule: dry run'"
    )
    assert rc == 0, out[-3000:]
    assert "would change, nothing changed" in out, out[-2000:]
    assert state(host) == before


def test_reducing_lets_only_reduce_only_exits_reach_the_exchange(host, playbook):
    rc, out, _ = playbook("reduce.yml", "-e", "core_kernel_state_reason='molecule: reduce'")
    assert rc == 0, out[-3000:]
    assert state(host)["state"] == "REDUCING"

    entry = send(host, tid("reducing-entry"))
    result = entry["results"][0]
    assert result["status"] == "gate_blocked", result
    assert result["reasons"].split(",")[0] == "REDUCING_ONLY", result
    assert entry["orders"] == [], entry

    exit_tid = tid("reducing-exit")
    got = send(host, exit_tid, **exit_fields())
    result = got["results"][0]
    assert result["status"] == "order_placed", result
    assert len(got["orders"]) == 1, got
    order = got["orders"][0]
    assert order["reduceOnly"] is True and order["side"] == "SELL", order


def test_resume_trades_again_and_the_audit_trail_names_every_change(host, playbook):
    rc, out, _ = playbook("resume.yml", "-e", "core_kernel_state_reason='molecule: resume'")
    assert rc == 0, out[-3000:]
    now = state(host)
    assert now["state"] == "ACTIVE", now
    trail = [(e["from"], e["to"], e["source"], e["reason"]) for e in now["history"][:3]]
    assert trail == [
        ("REDUCING", "ACTIVE", "playbook", "molecule: resume"),
        ("HALTED", "REDUCING", "playbook", "molecule: reduce"),
        ("ACTIVE", "HALTED", "playbook", "molecule: halt"),
    ], now["history"]
    got = send(host, tid("resumed"))
    result = got["results"][0]
    # No state hold any more; the shared cooldown / rate window may still hold an entry.
    if result["status"] == "order_placed":
        assert len(got["orders"]) == 1, got
    else:
        assert result["status"] == "gate_blocked", result
        assert set(result["reasons"].split(",")) <= {"COOLDOWN", "RATE_LIMIT"}, result
        assert not STATE_HOLDS & set(result["reasons"].split(","))
        assert got["orders"] == [], got
