#!/usr/bin/env bash
# Prepare this Debian 12 machine to run the systemd lab host (podman + runc).
# Idempotent: safe to rerun; every change it makes is printed with a "CHANGE:" prefix,
# and a run that changes nothing says so.
#
# What it may change on this machine:
#   1. apt packages (only the missing ones are installed)
#   2. /etc/containers/containers.conf (written only when its content differs; an existing,
#      different file is backed up to containers.conf.bak.<UTC timestamp> first)
set -euo pipefail

PACKAGES=(
  podman runc debootstrap uidmap slirp4netns fuse-overlayfs catatonit
  containernetworking-plugins iptables redis-server make python3-venv git ca-certificates
  prometheus redis-sentinel
)
CONF=/etc/containers/containers.conf
changes=0

say() { printf 'host-setup: %s\n' "$*"; }
change() { printf 'host-setup: CHANGE: %s\n' "$*"; changes=$((changes + 1)); }

if [[ $(id -u) -ne 0 ]]; then
  say "must run as root (it installs packages and writes $CONF)" >&2
  exit 1
fi

# 1. Packages
missing=()
for p in "${PACKAGES[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  change "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have empty package lists; refresh them only when something is missing.
  if [[ "${HOST_SETUP_SKIP_UPDATE:-0}" != 1 ]]; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
  # Debian's prometheus is here for promtool (the alert-rule tests); its postinst also starts a
  # server this machine does not need. Stopped only when this run installed it.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    change "prometheus.service stopped and disabled (only promtool is used here)"
    systemctl disable --now prometheus.service >/dev/null 2>&1 || pkill -x prometheus || true
  fi
else
  say "apt packages already installed: ${PACKAGES[*]}"
fi

# 2. containers.conf. Two quirks of this kind of host (see README / docs):
#  - crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported") -> use runc.
#  - podman asks for nofile 1048576, which root here cannot raise -> cap the container ulimits at
#    the host's hard limit. nproc 32768 is the highest value measured to be accepted.
hard_nofile=$(ulimit -Hn)
if [[ "$hard_nofile" == unlimited ]]; then hard_nofile=1048576; fi
desired=$(cat <<CONF_EOF
# Written by scripts/lab/host_setup.sh (quantum core kernel lab). Rerun it to restore.
[containers]
# podman's default nofile (1048576) exceeds this host's hard limit; use the host's own.
default_ulimits = [
  "nofile=${hard_nofile}:${hard_nofile}",
  "nproc=32768:32768",
]

[engine]
# crun 1.8 cannot run containers on hybrid cgroup v1/v2 hosts; runc can.
runtime = "runc"
CONF_EOF
)
if [[ -f "$CONF" ]] && [[ "$(cat "$CONF")" == "$desired" ]]; then
  say "$CONF already up to date (runtime=runc, nofile=${hard_nofile}, nproc=32768)"
else
  mkdir -p "$(dirname "$CONF")"
  if [[ -f "$CONF" ]]; then
    backup="$CONF.bak.$(date -u +%Y%m%dT%H%M%SZ)"
    cp -p "$CONF" "$backup"
    change "backed up the existing $CONF to $backup"
  fi
  tmp=$(mktemp "$CONF.XXXXXX")
  printf '%s\n' "$desired" >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$CONF"
  change "wrote $CONF (runtime=runc, default_ulimits nofile=${hard_nofile}:${hard_nofile}, nproc=32768:32768)"
fi

# Check that podman picked the settings up.
runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || echo unknown)
if [[ "$runtime" != runc ]]; then
  say "podman reports OCI runtime '$runtime', expected runc" >&2
  exit 1
fi

if ((changes)); then
  say "done: $changes change(s) made"
else
  say "done: nothing to change"
fi
