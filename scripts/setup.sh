#!/usr/bin/env bash
# Installs what zkq's tests, demo and benchmarks need and is missing: a Java runtime,
# ZooKeeper 3.8 (Debian's `zookeeper` package), and Chromium with its WebDriver (Debian's
# `chromium` and `chromium-driver`) for the dashboard's browser tests. Idempotent: does nothing
# when all is present.
# Rust (cargo) is expected to be installed already.
set -euo pipefail

have_zookeeper() {
  [ -f /usr/share/java/zookeeper.jar ] || { [ -n "${ZOOKEEPER_HOME:-}" ] && ls "$ZOOKEEPER_HOME"/lib/zookeeper-*.jar >/dev/null 2>&1; }
}

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
have_zookeeper || missing+=(zookeeper)
command -v "${CHROME:-chromium}" >/dev/null 2>&1 || missing+=(chromium)
command -v "${CHROMEDRIVER:-chromedriver}" >/dev/null 2>&1 || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || {
    echo "setup: no apt-get here; install Java 17 and ZooKeeper 3.8, then set ZOOKEEPER_HOME" >&2
    exit 1
  }
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a system ZooKeeper on 2181 on install; zkq's tests and demo start their own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet zookeeper 2>/dev/null; then
    $sudo systemctl stop zookeeper || true
  fi
fi

# zkq needs persistent recursive watches: ZooKeeper 3.6 or newer.
zookeeper_version() {
  local jar
  for jar in "${ZOOKEEPER_HOME:-/nonexistent}"/lib/zookeeper-[0-9]*.jar /usr/share/java/zookeeper-[0-9]*.jar; do
    [ -e "$jar" ] || continue
    basename "$jar" | sed -E 's/^zookeeper-([0-9]+\.[0-9]+\.[0-9]+).*/\1/'
    return
  done
}
version="$(zookeeper_version)"
if [ -n "$version" ]; then
  major="${version%%.*}"; rest="${version#*.}"; minor="${rest%%.*}"
  if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 6 ]; }; then
    echo "setup: ZooKeeper $version found; zkq needs 3.6 or newer (persistent watches). Install 3.8 and set ZOOKEEPER_HOME" >&2
    exit 1
  fi
fi

command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
}
chromium_version="$("${CHROME:-chromium}" --version 2>/dev/null | head -1 || true)"
echo "setup: java $(java -version 2>&1 | head -1 | cut -d'"' -f2), ZooKeeper ${version:-(version unknown)}, ${chromium_version:-chromium (version unknown)}, $(cargo --version)" >&2
