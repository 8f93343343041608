#!/usr/bin/env bash
# Build the lab base image localhost/quantum-lab from a debootstrap rootfs (Debian 12 + systemd,
# python3, redis-server). No registry is involved. Tags: :<input hash> and :latest.
# When an image with the same input hash exists, nothing is rebuilt (a warm build takes seconds).
# Inputs of the hash: this script's content, the suite, the package list and the mirror.
#
# Environment: LAB_IMAGE (default localhost/quantum-lab), LAB_MIRROR (default: the Debian mirror
# apt on this machine already uses), LAB_FORCE=1 rebuilds even when the hash matches.
set -euo pipefail

IMAGE=${LAB_IMAGE:-localhost/quantum-lab}
SUITE=bookworm
# openssh-server: the ssh scenario reaches the host as an operator would. prometheus and the
# exporters: the monitoring proof. All are installed but disabled, so a scenario that does not
# enable them runs none of them.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,redis-server,redis-tools,procps,iproute2,logrotate,ca-certificates,sudo,acl,less,curl,openssh-server,prometheus,prometheus-node-exporter,prometheus-redis-exporter
DISABLED_UNITS=(ssh.service ssh.socket prometheus.service prometheus-node-exporter.service prometheus-redis-exporter.service)
# Units that have nothing to do in a container and would fail or hang there. getty units would
# wait on a console nobody attaches to; remount-fs tries to remount the podman-provided root.
MASK_UNITS=(
  getty@tty1.service console-getty.service serial-getty@.service getty-static.service
  systemd-remount-fs.service systemd-firstboot.service systemd-update-utmp-runlevel.service
  apt-daily.timer apt-daily-upgrade.timer
)

say() { printf 'lab-image: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  say "must run as root (debootstrap and rootful podman)" >&2
  exit 1
fi

detect_mirror() {
  local f
  f=/etc/apt/sources.list.d/debian.sources
  if [[ -f $f ]]; then
    # deb822: the first stanza whose Suites include bookworm (not -security).
    awk '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") ok = 1 }
      /^$/ { if (ok && uri != "") { print uri; exit } ok = 0; uri = "" }
      END { if (ok && uri != "") print uri }
    ' "$f" | head -n1
    return
  fi
  if [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" && $3 == "bookworm" { print ($2 ~ /^\[/ ? $3 : $2); exit }' /etc/apt/sources.list
    return
  fi
}

MIRROR=${LAB_MIRROR:-$(detect_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# Hash only the build recipe: this script plus the values it builds from.
HASH=$({ cat "${BASH_SOURCE[0]}"; printf '%s\n' "$SUITE" "$PACKAGES" "$MIRROR" "${MASK_UNITS[*]}" "${DISABLED_UNITS[*]}"; } \
  | sha256sum | cut -c1-12)

if [[ "${LAB_FORCE:-0}" != 1 ]] && podman image exists "$IMAGE:$HASH"; then
  podman tag "$IMAGE:$HASH" "$IMAGE:latest"
  say "up to date: $IMAGE:$HASH (also :latest); nothing to build"
  exit 0
fi

start=$(date +%s)
workdir=$(mktemp -d /var/tmp/quantum-lab-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$workdir"; }
trap cleanup EXIT
rootfs=$workdir/rootfs

say "building $IMAGE:$HASH from debootstrap $SUITE ($MIRROR) into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$workdir/debootstrap.log" 2>&1 || {
  tail -n 40 "$workdir/debootstrap.log" >&2
  say "debootstrap failed (log above)" >&2
  exit 1
}
say "debootstrap done in $(($(date +%s) - start)) s"

# Redis: loopback only, append-only file on, enabled at boot.
redis_conf=$rootfs/etc/redis/redis.conf
sed -i -E \
  -e 's/^#?[[:space:]]*bind .*/bind 127.0.0.1/' \
  -e 's/^#?[[:space:]]*port .*/port 6379/' \
  -e 's/^#?[[:space:]]*appendonly .*/appendonly yes/' \
  "$redis_conf"
grep -qx 'bind 127.0.0.1' "$redis_conf" && grep -qx 'appendonly yes' "$redis_conf" \
  || { say "could not set bind/appendonly in redis.conf" >&2; exit 1; }
chroot "$rootfs" systemctl enable redis-server.service >/dev/null 2>&1
chroot "$rootfs" systemctl mask "${MASK_UNITS[@]}" >/dev/null 2>&1
chroot "$rootfs" systemctl disable "${DISABLED_UNITS[@]}" >/dev/null 2>&1 || true
# Host keys are made per container at first boot (ssh-keygen -A in the ssh scenario), never shared.
rm -f "$rootfs"/etc/ssh/ssh_host_*

# A fresh machine id on every container start; no stale apt/debootstrap leftovers.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
ln -sf /usr/share/zoneinfo/Etc/UTC "$rootfs/etc/localtime"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/debootstrap
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$rootfs/etc/apt/sources.list"
printf '%s\n' "$HASH" >"$rootfs/etc/quantum-lab-image"

say "importing into podman"
tar -C "$rootfs" --numeric-owner -c . | podman import --quiet \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL quantum.lab.input-hash=$HASH" \
  - "$IMAGE:$HASH" >/dev/null
podman tag "$IMAGE:$HASH" "$IMAGE:latest"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE:$HASH")
say "built $IMAGE:$HASH (also :latest), $((size / 1000000)) MB, in $(($(date +%s) - start)) s"
