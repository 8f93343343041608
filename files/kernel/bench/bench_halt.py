"""How fast a halt takes hold (issue 14): from ``core-kernel halt`` returning to the first admit
that answers TRADING_HALTED, with 4 threads admitting without pause. Prints numbers; not a test.

Starts its own redis-server (bench_kernel's: no AOF, so Redis's fsync is not what is timed).
Per round: the threads
admit distinct intents (every one passes while ACTIVE), the console script ``core-kernel halt``
runs as a child process; t0 = the moment it exits. Reported: the halt command's wall time, the
time from t0 to the first TRADING_HALTED answer an admit *started after* t0 gave, and how many
PASSes an admit started after t0 gave (must be 0).

    python bench/bench_halt.py --rounds 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from core_kernel.config import load_config
from core_kernel.gates import GateVerdict, Reason
from core_kernel.intent import parse_intent
from core_kernel.mode import TradingMode
from core_kernel.store import KernelStore
from core_kernel.trading_state import TradingState, set_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernel import start_redis


def one_round(url: str, env_path: Path, n: int, threads: int) -> tuple[float, float, int]:
    admin = redis.Redis.from_url(url, decode_responses=True)
    set_state(admin, TradingState.ACTIVE, f"bench round {n}", who=("bench", "bench"))
    config = load_config(env_path)
    stop = threading.Event()
    t0: list[float] = []
    first_halted: list[float] = []
    late_passes = [0]
    lock = threading.Lock()

    def loop(w: int) -> None:
        client = redis.Redis.from_url(url, decode_responses=True)
        store = KernelStore(client, config, TradingMode.TESTNET)
        k = 0
        while not stop.is_set():
            started = time.perf_counter()
            d = store.admit(
                parse_intent(
                    {
                        "symbol": "ETHUSDT",
                        "side": "BUY",
                        "qty": "0.01",
                        "price": "3500",
                        "expected_move_usd": "250",
                        "tp": "3587.5",
                        "sl": "3465",
                        "model": "NHiTS",
                        "regime": "TREND",
                        "trace_id": f"b{n}-{w}-{k}",
                    }
                )
            )
            done = time.perf_counter()
            k += 1
            if t0 and started > t0[0]:
                with lock:
                    if d.verdict is GateVerdict.PASS:
                        late_passes[0] += 1
                    elif d.primary is Reason.TRADING_HALTED and not first_halted:
                        first_halted.append(done)
                        stop.set()
        client.close()

    workers = [threading.Thread(target=loop, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    time.sleep(0.2)
    exe = shutil.which("core-kernel", path=str(Path(sys.executable).parent)) or "core-kernel"
    env = dict(os.environ, CORE_GATES_ENV=str(env_path))
    began = time.perf_counter()
    subprocess.run(
        [exe, "halt", "--reason", f"bench round {n}", "--redis-url", url],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0.append(time.perf_counter())
    for t in workers:
        t.join(timeout=30)
    stop.set()
    admin.close()
    return t0[0] - began, first_halted[0] - t0[0], late_passes[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            env_path = Path(tmp) / "core_gates.env"
            env_path.write_text(
                f"CORE_KERNEL_REDIS_URL={url}\nTRADING_MODE=TESTNET\nMIN_HOLD_SECONDS=0\n"
                "MAX_TRADES_10MIN=1000000\n"
            )
            rows = [one_round(url, env_path, n, args.threads) for n in range(args.rounds)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    cmd = [r[0] * 1000 for r in rows]
    lag = [r[1] * 1000 for r in rows]
    print(f"rounds={len(rows)} threads={args.threads}")
    print(f"halt_command_wall_ms median={statistics.median(cmd):.1f} max={max(cmd):.1f}")
    print(
        f"command_return_to_first_TRADING_HALTED_ms median={statistics.median(lag):.3f} "
        f"max={max(lag):.3f} (goal: the next admit, <= 1000)"
    )
    print(f"passes_from_admits_started_after_return={sum(r[2] for r in rows)} (must be 0)")


if __name__ == "__main__":
    main()
