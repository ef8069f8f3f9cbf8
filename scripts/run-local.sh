#!/usr/bin/env bash
# The main job on one machine: local services, migrations, a backfill, then the sync daemon.
#
#   scripts/run-local.sh [pipeline/paving.toml] [mongodump folder]
#
# With MONGO_URI set, the daemon tails that MongoDB replica set. Without it, a local `mongosim`
# (the project's MongoDB wire simulator) is started on 127.0.0.1:27017 and, when a mongodump
# folder is given, loaded with it; write to it with any MongoDB client and watch the rows appear
# in PostgreSQL. Metrics and probes: http://127.0.0.1:9464/{metrics,healthz,readyz}.
# Ctrl-C stops everything (the daemon shuts down gracefully).
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${1:-pipeline/paving.toml}
DUMP=${2:-}

bash scripts/services.sh
PROFILE=${PROFILE:-release}   # PROFILE=dev for a quicker, slower-running build
cargo build --profile "$PROFILE" --workspace --bins
OUT=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=$OUT/bowmark-cdc
"$BIN" validate "$PIPELINE"
"$BIN" migrate --pipeline "$PIPELINE"

if [ -z "${MONGO_URI:-}" ]; then
  db=$(sed -n 's/^database *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)
  args=(--listen 127.0.0.1:27017 --replset rs0)
  [ -n "$DUMP" ] && args+=(--load-dump "$db=$DUMP")
  log=$(mktemp)
  "$OUT/mongosim" "${args[@]}" >"$log" 2>&1 &
  sim=$!
  trap 'kill $sim 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do grep -q '^mongodb://' "$log" && break; sleep 0.1; done
  grep -q '^mongodb://' "$log" || { cat "$log" >&2; echo "run-local: mongosim did not start" >&2; exit 1; }
  export MONGO_URI=$(grep -m1 '^mongodb://' "$log")
  echo "run-local: no MONGO_URI given; serving MongoDB from mongosim at $MONGO_URI" >&2
fi

# Snapshot what MongoDB holds now, and hand over to the change stream without a gap.
"$BIN" backfill --pipeline "$PIPELINE"
"$BIN" run --pipeline "$PIPELINE" --role all &
daemon=$!
# Pass SIGTERM/SIGINT on to the daemon (graceful shutdown), then wait for its exit status.
trap 'kill -TERM "$daemon" 2>/dev/null || true' INT TERM
wait "$daemon" || wait "$daemon"
