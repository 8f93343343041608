#!/usr/bin/env bash
# The alert rules' checks (make test): the committed file is what the role renders, promtool
# accepts it, and every alert's unit tests (fires on its fault, silent when healthy) pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v promtool >/dev/null || { echo "test_rules: promtool not found (Debian package prometheus)" >&2; exit 1; }
scripts/monitoring/render_rules.sh --check
promtool check rules files/monitoring/quantum-kernel.rules.yml
promtool test rules files/monitoring/tests/*.yml
