#!/usr/bin/env bash
# Remove the lab host container (idempotent). The image stays; `make lab` starts a fresh host.
set -euo pipefail
NAME=${LAB_NAME:-quantum-lab}
if podman container exists "$NAME"; then
  podman rm -f -t 10 "$NAME" >/dev/null
  printf 'lab: removed %s\n' "$NAME"
else
  printf 'lab: %s is not there; nothing to remove\n' "$NAME"
fi
