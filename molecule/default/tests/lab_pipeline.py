"""The lab pipeline seen from the tests: publish through the kernel, deliver, read results and
the fake exchange's orders (shared by the default scenario's pipeline and trading-state tests).
"""

from __future__ import annotations

import json
import time

BIN = "/opt/quantum/core-kernel/current/bin"
PY = f"{BIN}/python"
EXCHANGE = "http://127.0.0.1:18080"
WORKER = "quantum-execution.service"

# Runs in the host's kernel venv: publish / deliver / read results / read the exchange's orders.
HELPER = r"""
import json, sys, urllib.request
from core_kernel import consume, streams
from core_kernel.config import load_config
cfg = load_config()
r = streams.make_client(cfg.redis_url)
cmd, arg = sys.argv[1], sys.argv[2]
if cmd == "publish":
    print(json.dumps(streams.publish_intent_once(r, json.loads(arg))))
elif cmd == "deliver":
    got = consume.read_new(consume.raw_client(r), cfg.consumer_name, block_ms=None, count=1)
    print(json.dumps([e.id for e in got]))
elif cmd == "state":
    res = [
        {k: v for k, v in f.items()}
        for _, f in r.xrange(cfg.result_stream, "-", "+")
        if f.get("trace_id") == arg
    ]
    with urllib.request.urlopen("EXCHANGE_URL/_orders", timeout=10) as resp:
        orders = [o for o in json.load(resp) if o.get("clientOrderId") == arg]
    cons = [
        {"name": c["name"], "pending": c["pending"]}
        for c in r.xinfo_consumers(streams.STREAM, streams.GROUP)
    ]
    print(json.dumps({"results": res, "orders": orders, "consumers": cons}))
""".replace("EXCHANGE_URL", EXCHANGE)


def helper(host, *args: str) -> object:
    # testinfra shell-quotes the arguments given after the command template
    cmd = host.run(f"{PY} -c %s" + " %s" * len(args), HELPER, *args)
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def intent(trace_id: str, **fields: object) -> str:
    """An entry that passes the six gates (fresh symbol and rate window permitting)."""
    return json.dumps(
        {
            "trace_id": trace_id,
            "symbol": "XRPUSDT",
            "side": "BUY",
            "qty": "200.0",
            "price": "0.6",
            "expected_move_usd": "5",
            "tp": "0.612",
            "sl": "0.596",
            "model": "NHiTS",
            "regime": "TREND",
            "leverage": "1",
        }
        | fields
    )


def wait_state(host, trace_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = helper(host, "state", trace_id)
        if state["results"] or time.monotonic() > deadline:
            return state
        time.sleep(1)
