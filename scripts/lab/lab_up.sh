#!/usr/bin/env bash
# Start the lab host: container quantum-lab from localhost/quantum-lab:latest with systemd as
# PID 1, and wait until systemd reports "running". Idempotent: a running lab is left as it is.
set -euo pipefail

NAME=${LAB_NAME:-quantum-lab}
IMAGE=${LAB_IMAGE:-localhost/quantum-lab}:latest
TIMEOUT=${LAB_BOOT_TIMEOUT:-120}

say() { printf 'lab: %s\n' "$*"; }

if ! podman image exists "$IMAGE"; then
  say "image $IMAGE is missing: run 'make lab-image' (scripts/lab/build_image.sh) first" >&2
  exit 1
fi

state=$(podman container inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null || echo absent)
start=$(date +%s.%N)
# podman can keep calling a container "running" after its process died outside its control
# (then every exec fails and stop hangs in "stopping"). The lab host is disposable and
# `make deploy` prepares it from scratch, so such a husk is replaced.
if [[ "$state" == running ]] && ! podman exec "$NAME" true 2>/dev/null; then
  say "$NAME is marked running but does not answer (its process is gone); recreating it"
  podman rm -f "$NAME" >/dev/null
  state=absent
fi
case "$state" in
  running)
    say "$NAME is already running"
    ;;
  absent)
    say "starting $NAME from $IMAGE"
    podman run -d --name "$NAME" --hostname "$NAME" --systemd=always \
      --label quantum.lab=1 "$IMAGE" /lib/systemd/systemd >/dev/null
    ;;
  *)
    say "$NAME exists ($state); starting it"
    podman start "$NAME" >/dev/null
    ;;
esac

cur=$(podman container inspect --format '{{.Image}}' "$NAME")
latest=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [[ "$cur" != "$latest" ]]; then
  say "note: $NAME runs an older image than $IMAGE; 'make lab-down lab' recreates it"
fi

# systemctl --wait returns once boot has finished; degraded is a failure worth showing.
if ! sysstate=$(timeout "$TIMEOUT" podman exec "$NAME" systemctl is-system-running --wait); then
  say "$NAME did not reach 'running' within ${TIMEOUT}s (state: ${sysstate:-unknown}); failed units:" >&2
  podman exec "$NAME" systemctl --failed --no-pager >&2 || true
  exit 1
fi
end=$(date +%s.%N)
say "$NAME: systemd $sysstate ($(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }') s)"
cat <<MSG
lab: reach it with
  podman exec -it $NAME bash                                  # a shell inside
  ansible -i inventory/lab quantum_kernel -m ansible.builtin.ping   # Ansible (podman connection)
  make lab-down                                               # remove it
MSG
