#!/usr/bin/env bash
# A local standalone ZooKeeper for trying zkq's command line: 127.0.0.1:${PORT:-2181}, data in a
# temporary directory removed when it stops (Ctrl-C, or kill). Runs in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-2181}
bash scripts/setup.sh
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "zookeeper.sh: something already answers on 127.0.0.1:$PORT (set PORT to use another port)" >&2
  exit 1
fi
work=$(mktemp -d -t zkq-zookeeper.XXXXXX)
cat > "$work/zoo.cfg" <<CFG
tickTime=2000
dataDir=$work
clientPort=$PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,mntr
autopurge.purgeInterval=1
autopurge.snapRetainCount=3
CFG
classpath=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
[ -n "${ZOOKEEPER_HOME:-}" ] && classpath="$ZOOKEEPER_HOME/lib/*"
echo "zookeeper.sh: ZooKeeper on 127.0.0.1:$PORT (log: $work/server.log); Ctrl-C stops it" >&2
java -Xmx512m -cp "$classpath" org.apache.zookeeper.server.quorum.QuorumPeerMain "$work/zoo.cfg" >"$work/server.log" 2>&1 &
zk=$!
trap 'kill "$zk" 2>/dev/null || true; wait "$zk" 2>/dev/null || true; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
wait "$zk"
