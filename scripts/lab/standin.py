#!/usr/bin/python3
"""Stand-in for a quantum-trader service in the lab (stdlib only).

Writes its own environment as JSON to /run/quantum-lab/<name>.env.json when it starts, so tests
and the deploy evidence can see which environment systemd gave it (EnvironmentFile, drop-ins),
then sleeps until SIGTERM.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

RUN_DIR = Path(os.environ.get("QUANTUM_LAB_RUN_DIR", "/run/quantum-lab"))


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "standin"
    stop = False

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    record = {
        "unit": name,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "started_at": time.time(),
        "env": dict(os.environ),
    }
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    # The record holds the service's whole environment, exchange keys included: owner only.
    os.umask(0o077)
    target = RUN_DIR / f"{name}.env.json"
    tmp = target.with_suffix(".tmp")
    # Write then rename so a reader never sees half a file.
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(target)
    print(f"standin={name} started pid={os.getpid()} env_file={target}", flush=True)

    while not stop:
        time.sleep(1)
    print(f"standin={name} stopping on signal", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
