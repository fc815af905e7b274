#!/usr/bin/env bash
# Runs zkq's whole test suite against real ZooKeeper servers that the tests start themselves,
# then a one-minute chaos run (zkq-chaos) on a 3-node ensemble.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two build jobs and two test threads per binary: sized for small machines; every test binary
# starts its own ZooKeeper.
# A test binary that runs for over 10 minutes is hung: scripts/hang-watch.sh prints its threads'
# stacks and kills it, so the run fails with evidence rather than at the CI's time limit.
cargo test --workspace --locked -j2 -- --test-threads=2 &
tests=$!
bash scripts/hang-watch.sh "$tests" 600 &
wait "$tests"
# ZKQ_CHAOS_SEED picks other faults (the seed is printed; timing varies from run to run anyway).
cargo build --locked -j2 -p zkq-chaos -p zkq-worker
seed="${ZKQ_CHAOS_SEED:-1}"
# With credentials: every znode the fleet makes must be creator-all (checked at the end).
target/debug/zkq-chaos --seed "$seed" --duration 60s --rate 60 --auth
