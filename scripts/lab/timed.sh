#!/usr/bin/env bash
# timed.sh NAME CMD...: run CMD, and when $TIMINGS_FILE is set append "NAME<TAB>seconds<TAB>ok|FAIL(rc)"
# to it. Exits with CMD's exit code. `scripts/lab/timed.sh --report` prints the table.
set -uo pipefail
if [[ "${1:-}" == --report ]]; then
  [[ -n "${TIMINGS_FILE:-}" && -s "$TIMINGS_FILE" ]] || exit 0
  printf '\n==== stage timings ====\n'
  awk -F'\t' '{ printf "  %-34s %8.1f s  %s\n", $1, $2, $3; t += $2 } END { printf "  %-34s %8.1f s\n", "total", t }' "$TIMINGS_FILE"
  exit 0
fi
name=$1
shift
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
secs=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')
status=ok
((rc == 0)) || status="FAIL(rc=$rc)"
printf 'timing: %s %s s %s\n' "$name" "$secs" "$status" >&2
if [[ -n "${TIMINGS_FILE:-}" ]]; then
  printf '%s\t%s\t%s\n' "$name" "$secs" "$status" >>"$TIMINGS_FILE"
fi
exit "$rc"
