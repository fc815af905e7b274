#!/usr/bin/env bash
# Watches the test processes of one `cargo test` run (pid $1): a test binary alive for longer
# than $2 seconds is hung. Its threads' stacks are printed (with gdb, when installed), then it
# is killed, so that the run fails with the evidence instead of running into the CI's time
# limit. Ends with the watched run.
set -uo pipefail
run="$1"
limit="${2:-600}"
deps="$(cd "$(dirname "$0")/.." && pwd)/target/debug/deps/"
while kill -0 "$run" 2>/dev/null; do
  sleep 15
  for pid in $(pgrep -f "target/debug/deps/" || true); do
    # Only test binaries of this checkout (not rustc, whose arguments name deps/ too).
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    case "$exe" in "$deps"*) ;; *) continue ;; esac
    age=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -n "$age" ] && [ "$age" -gt "$limit" ] || continue
    echo "hang-watch: $(ps -o args= -p "$pid") has run for ${age}s; its threads:" >&2
    if command -v gdb >/dev/null 2>&1; then
      gdb -p "$pid" -batch -ex "thread apply all bt" 2>&1 | grep -E "^(Thread|#)" | head -400 >&2
    else
      echo "hang-watch: (gdb is not installed: no stacks)" >&2
    fi
    kill -9 "$pid" 2>/dev/null
  done
done
