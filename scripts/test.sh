#!/usr/bin/env bash
# The project's test command: every unit and integration test, against real PostgreSQL and
# RabbitMQ (run scripts/services.sh first) and the in-process MongoDB simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "test: cargo-nextest is missing; installing it with 'cargo install cargo-nextest --locked'" >&2
  cargo install cargo-nextest --locked
fi
# Kubernetes manifests, alert rules and dashboard (tools that are missing are skipped, with why).
bash scripts/check-k8s.sh
# Tests spawn the simulator and daemon binaries: build them first so none is stale.
cargo build --workspace --bins
exec cargo nextest run --workspace --no-fail-fast "$@"
