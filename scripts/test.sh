#!/usr/bin/env bash
# Runs zkq's whole test suite against real ZooKeeper servers that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two build jobs and two test threads per binary: sized for small machines; every test binary
# starts its own ZooKeeper.
cargo test --workspace --locked -j2 -- --test-threads=2
