#!/usr/bin/env bash
# zkq demo: starts a local ZooKeeper, a fleet of workers and a producer, and shows jobs flowing
# (with some retries and a few dead letters) until every job is settled. Cleans up on exit or
# Ctrl-C. Tunable: JOBS (default 3000), WORKERS (default 3), CONCURRENCY (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-3000}
WORKERS=${WORKERS:-3}
CONCURRENCY=${CONCURRENCY:-8}
POISON=3

bash scripts/setup.sh
echo "== building zkq (release; the first build takes a few minutes)"
cargo build --release --locked -j2 -p zkq-producer -p zkq-worker
bin=target/release

work=$(mktemp -d -t zkq-demo.XXXXXX)
pids=()
zk_pid=""
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$zk_pid" ] && { kill -KILL "$zk_pid" 2>/dev/null || true; wait "$zk_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: cleaning up"; exit 130' INT TERM

# A free loopback port: one nothing answers on.
port=""
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 20000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
[ -n "$port" ] || { echo "no free port found" >&2; exit 1; }

echo "== starting ZooKeeper on 127.0.0.1:$port"
mkdir -p "$work/zk"
cat > "$work/zk/zoo.cfg" <<CFG
tickTime=500
dataDir=$work/zk
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr
autopurge.purgeInterval=1
autopurge.snapRetainCount=3
CFG
classpath=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
[ -n "${ZOOKEEPER_HOME:-}" ] && classpath="$ZOOKEEPER_HOME/lib/*"
java -Xmx256m -cp "$classpath" org.apache.zookeeper.server.quorum.QuorumPeerMain "$work/zk/zoo.cfg" \
  >"$work/zk/server.log" 2>&1 &
zk_pid=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port" && echo srvr >&3 && grep -q Mode <&3) 2>/dev/null; then break; fi
  sleep 0.1
done
export ZKQ_ZK=127.0.0.1:$port ZKQ_ROOT=/zkq-demo

"$bin/zkq-producer" --quiet create-queue --queue demo --partitions 8 --max-attempts 3 --retry-base 200ms

echo "== starting $WORKERS workers (concurrency $CONCURRENCY each)"
# resize: always succeeds. flaky: fails its first attempt one time in five. poison: always fails.
for i in $(seq 1 "$WORKERS"); do
  "$bin/zkq-worker" --queue demo --concurrency "$CONCURRENCY" --id "demo-worker-$i" --quiet \
    --exec "resize=cat >/dev/null; echo ok >> $work/done" \
    --exec "flaky=cat >/dev/null; if [ \$ZKQ_ATTEMPT = 1 ] && [ \$((\$(od -An -N1 -tu1 /dev/urandom) % 5)) = 0 ]; then echo 'transient failure' >&2; exit 1; fi; echo ok >> $work/done; [ \$ZKQ_ATTEMPT = 1 ] || echo r >> $work/retried" \
    --exec "poison=cat >/dev/null; echo x >> $work/poison; echo 'cannot process this payload' >&2; exit 2" \
    >"$work/worker-$i.log" 2>&1 &
  pids+=($!)
done

echo "== enqueuing $JOBS jobs (+$POISON poison jobs)"
half=$((JOBS / 2))
started=$(date +%s.%N)
seq 1 "$half" | sed 's/.*/{"image":&}/' > "$work/resize.jsonl"
seq 1 $((JOBS - half)) | sed 's/.*/{"order":&}/' > "$work/flaky.jsonl"
"$bin/zkq-producer" enqueue --queue demo --kind resize --file "$work/resize.jsonl" >/dev/null
"$bin/zkq-producer" enqueue --queue demo --kind flaky --file "$work/flaky.jsonl" >/dev/null
for i in $(seq 1 $POISON); do
  "$bin/zkq-producer" --quiet enqueue --queue demo --kind poison --priority 2 "{\"bad\":$i}" >/dev/null
done

echo "== draining"
count() { [ -f "$1" ] && wc -l <"$1" | tr -d ' ' || echo 0; }
while :; do
  done_n=$(count "$work/done"); poison_n=$(count "$work/poison")
  printf '\r   done %6d / %d   retried %4d   poison attempts %d / %d ' \
    "$done_n" "$JOBS" "$(count "$work/retried")" "$poison_n" $((POISON * 3))
  [ "$done_n" -ge "$JOBS" ] && [ "$poison_n" -ge $((POISON * 3)) ] && break
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo; echo "a worker died:"; cat "$work"/worker-*.log; exit 1; }; done
  sleep 0.5
done
finished=$(date +%s.%N)
echo
secs=$(echo "$finished - $started" | bc -l 2>/dev/null || echo 0)
rate=$(echo "$JOBS / $secs" | bc -l 2>/dev/null || echo 0)
printf '== summary: %d jobs done (%d after a retry), %d poison jobs dead-lettered after 3 attempts each, %.1fs, %.0f jobs/s\n' \
  "$(count "$work/done")" "$(count "$work/retried")" "$POISON" "$secs" "$rate"
echo "== stopping workers gracefully"
