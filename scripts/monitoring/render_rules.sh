#!/usr/bin/env bash
# Render the kernel's alert rules with the kernel_monitoring role's defaults into
# files/monitoring/quantum-kernel.rules.yml (the file an operator drops into their Prometheus).
#   scripts/monitoring/render_rules.sh           write the file
#   scripts/monitoring/render_rules.sh --check   fail if the committed file is not what renders
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="files/monitoring/quantum-kernel.rules.yml"
cd "$root"
[[ -x .venv/bin/ansible-playbook ]] && PATH="$root/.venv/bin:$PATH"
export ANSIBLE_HOME="${ANSIBLE_HOME:-$root/.ansible}"
export ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

render() {
  if ! ansible-playbook -i localhost, -c local scripts/monitoring/render_rules.yml \
      -e "rules_dest=$1" >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    echo "render_rules: ansible-playbook failed (output above)" >&2
    exit 1
  fi
}

if $check; then
  render "$tmp/rules.yml"
  if ! cmp -s "$tmp/rules.yml" "$out"; then
    echo "render_rules: $out is not what the template and defaults render; run scripts/monitoring/render_rules.sh" >&2
    exit 1
  fi
  echo "render_rules: $out is up to date"
else
  mkdir -p "$(dirname "$out")"
  render "$root/$out"
  echo "render_rules: wrote $out"
fi
