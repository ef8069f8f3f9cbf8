#!/usr/bin/env bash
# The main job on one machine: local services, migrations, a backfill, then the sync daemon.
#
#   scripts/run-local.sh [pipeline/paving.toml] [mongodump folder]
#
# With MONGO_URI set, the daemon tails that MongoDB replica set. Without it, a local `mongosim`
# (the project's MongoDB wire simulator, data in memory) is started on 127.0.0.1:27017 and
# loaded with the mongodump folder (mongodump's output folder or its database subfolder), or,
# without one, with a generated dataset (REPORTS daily reports, default 500, SEED default 1).
# Write to it with any MongoDB client and watch the rows appear in PostgreSQL.
#
# The simulator forgets everything when it stops, so in that mode a reporting database that
# already holds an earlier run's data is dropped and re-created first (it says so).
#
# Environment: CDC_HTTP_LISTEN (the daemon's /metrics, /healthz, /readyz; default the
# pipeline's http.listen, 0.0.0.0:9464), MONGOSIM_LISTEN (default 127.0.0.1:27017),
# PROFILE (release; `dev` builds faster), CARGO_TARGET_DIR (honoured), MONGO_URI, POSTGRES_*.
# Ctrl-C, SIGINT or SIGTERM stops everything (the daemon shuts down gracefully).
set -euo pipefail

# A script started in the background by a non-interactive shell inherits SIGINT ignored, and
# bash cannot trap a signal ignored on entry: start again with SIGINT at its default.
if [ -z "${RUN_LOCAL_REEXEC:-}" ] && env --default-signal=INT true 2>/dev/null; then
  RUN_LOCAL_REEXEC=1 exec env --default-signal=INT bash "$0" "$@"
fi

cd "$(dirname "$0")/.."
PIPELINE=${1:-pipeline/paving.toml}
DUMP=${2:-}
PROFILE=${PROFILE:-release}
MONGOSIM_LISTEN=${MONGOSIM_LISTEN:-127.0.0.1:27017}
REPORTS=${REPORTS:-500}
SEED=${SEED:-1}

say() { printf 'run-local: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ -f "$PIPELINE" ] || die "no pipeline file $PIPELINE (try pipeline/paving.toml)"
[ -z "$DUMP" ] || [ -d "$DUMP" ] || die "no folder $DUMP (give mongodump's output folder or its database folder)"

# --- signals and clean-up ------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/run-local.XXXXXX")
child=""    # the step running now (build, backfill, daemon)
sim=""      # the simulator
stopping=""
stop_pid() { # pid: SIGTERM, then wait for it (SIGKILL after 20 s)
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  trap - INT TERM
  [ -z "$child" ] || stop_pid "$child"
  [ -z "$sim" ] || stop_pid "$sim"
  rm -rf "$tmp"
}
on_signal() {
  stopping=1
  say "stopping"
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true
}
trap cleanup EXIT
trap on_signal INT TERM

# Run a step in the background and wait for it, so a signal reaches the trap at once.
step() {
  local rc=0
  "$@" &
  child=$!
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
  child=""
  [ -z "$stopping" ] || exit 130
  return "$rc"
}

# --- ports, before any work ----------------------------------------------------------------
port_of() { printf '%s' "${1##*:}"; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
file_listen=$(sed -n '/^\[http\]/,/^\[/s/^listen *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)
HTTP_LISTEN=${CDC_HTTP_LISTEN:-${file_listen:-0.0.0.0:9464}}
HTTP_PORT=$(port_of "$HTTP_LISTEN")
if [ "$HTTP_PORT" != 0 ] && port_busy "$HTTP_PORT"; then
  die "port $HTTP_PORT (the daemon's /metrics, /healthz, /readyz at $HTTP_LISTEN) is already in use; stop what holds it (ss -ltnp 'sport = :$HTTP_PORT') or pick another port: CDC_HTTP_LISTEN=127.0.0.1:$((HTTP_PORT + 1)) $0 $*"
fi
if [ -z "${MONGO_URI:-}" ]; then
  MONGO_PORT=$(port_of "$MONGOSIM_LISTEN")
  if port_busy "$MONGO_PORT"; then
    die "port $MONGO_PORT (the MongoDB simulator at $MONGOSIM_LISTEN) is already in use; stop what holds it (ss -ltnp 'sport = :$MONGO_PORT'), pick another port with MONGOSIM_LISTEN=127.0.0.1:$((MONGO_PORT + 1)), or tail a real replica set with MONGO_URI=..."
  fi
fi

# --- services and binaries -----------------------------------------------------------------
# Where cargo puts them: CARGO_TARGET_DIR, a config's build.target-dir, or ./target.
metadata=$(cargo metadata --format-version 1 --no-deps) || die "cargo metadata failed"
TARGET_DIR=$(printf '%s' "$metadata" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || die "cannot tell cargo's target directory (cargo metadata)"
OUT=$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=$OUT/bowmark-cdc
if [ -n "${RUN_LOCAL_DRY_RUN:-}" ]; then # for the tests: the plan, no work
  say "dry run: binaries $BIN and $OUT/mongosim; daemon HTTP $HTTP_LISTEN; MongoDB ${MONGO_URI:-mongosim at $MONGOSIM_LISTEN}"
  exit 0
fi
bash scripts/services.sh
build=(cargo build --profile "$PROFILE" --workspace --bins)
[ -n "${MONGO_URI:-}" ] || [ -n "$DUMP" ] || build+=(--example gen_dump)
step "${build[@]}"
[ -x "$BIN" ] || die "$BIN is missing after the build"
"$BIN" validate "$PIPELINE"
# As the image sets them (Dockerfile): a batch's large buffers go back to the system when freed.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-131072}

db=$(sed -n 's/^database *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)
pg_db=${POSTGRES_DB:-$(sed -n '/^\[postgres\]/,/^\[/s/^database *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)}
name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)
vhost=${RABBITMQ_VHOST:-$(sed -n '/^\[rabbitmq\]/,/^\[/s/^vhost *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)}
queue=$(sed -n '/^\[rabbitmq\]/,/^\[/s/^queue *= *"\(.*\)"/\1/p' "$PIPELINE" | head -n 1)
psql_pg() { psql -X -q -v ON_ERROR_STOP=1 -h "${POSTGRES_HOST:-127.0.0.1}" -p "${POSTGRES_PORT:-5432}" -U "${POSTGRES_USER:-postgres}" "$@"; }

# --- the simulator keeps nothing across runs: do not re-snapshot over an earlier run --------
if [ -z "${MONGO_URI:-}" ] && [ -z "${POSTGRES_URL:-}" ]; then
  earlier=$(psql_pg -d "$pg_db" -At -c "SELECT CASE WHEN to_regclass('cdc.source_doc') IS NULL THEN '' \
    WHEN EXISTS (SELECT 1 FROM cdc.source_doc) OR EXISTS (SELECT 1 FROM cdc.checkpoint) \
    THEN COALESCE((SELECT 'last checkpoint ' || to_char(max(updated_at), 'YYYY-MM-DD HH24:MI:SS TZ') FROM cdc.checkpoint), 'data') \
    ELSE '' END" 2>/dev/null || true)
  if [ -n "$earlier" ]; then
    say "database $pg_db holds an earlier run's data ($earlier)."
    say "mongosim keeps its data in memory only: it starts again from $([ -n "$DUMP" ] && echo "the dump" || echo "the generated dataset"), so what was written through a client in the earlier run is gone, and a backfill over that database would archive those rows."
    say "starting over: dropping and re-creating $pg_db (and purging queue ${queue:-cdc.projector} on vhost $vhost). Set MONGO_URI to a real MongoDB to keep data across runs."
    psql_pg -d postgres -c "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" -c "CREATE DATABASE \"$pg_db\""
    rabbitmqctl -q purge_queue -p "$vhost" "${queue:-cdc.projector}" >/dev/null 2>&1 || true
  fi
fi

"$BIN" migrate --pipeline "$PIPELINE"

# --- MongoDB: a real replica set, or the simulator --------------------------------------------
if [ -z "${MONGO_URI:-}" ]; then
  load=$DUMP
  if [ -z "$load" ]; then
    load=$tmp/generated
    say "no mongodump folder given: generating a dataset ($REPORTS daily reports with their work items, rates and dimensions; seed $SEED)"
    step "$OUT/examples/gen_dump" "$load" "$REPORTS" "$SEED" >"$tmp/gen_dump.log"
  fi
  log=$tmp/mongosim.log
  "$OUT/mongosim" --listen "$MONGOSIM_LISTEN" --replset rs0 --load-dump "$db=$load" >"$log" 2>&1 &
  sim=$!
  for _ in $(seq 1 300); do grep -q '^mongodb://' "$log" && break; kill -0 "$sim" 2>/dev/null || break; sleep 0.1; done
  if ! grep -q '^mongodb://' "$log"; then
    cat "$log" >&2
    die "mongosim did not start"
  fi
  grep '^mongosim:' "$log" | sed 's/^/run-local: /' >&2 || true
  MONGO_URI=$(grep -m1 '^mongodb://' "$log")
  export MONGO_URI
  say "no MONGO_URI given; serving MongoDB from mongosim at $MONGO_URI (data in memory)"
fi

# Snapshot what MongoDB holds now, and hand over to the change stream without a gap.
step "$BIN" backfill --pipeline "$PIPELINE"

# The daemon; SIGINT/SIGTERM reach it through the trap (graceful shutdown).
"$BIN" run --pipeline "$PIPELINE" --role all &
child=$!
probe_host=${HTTP_LISTEN%:*}
case "$probe_host" in 0.0.0.0 | "[::]" | "") probe_host=127.0.0.1 ;; esac
if [ "$HTTP_PORT" != 0 ] && command -v curl >/dev/null 2>&1; then
  for _ in $(seq 1 600); do
    [ -z "$stopping" ] && kill -0 "$child" 2>/dev/null || break
    if curl -fsS "http://$probe_host:$HTTP_PORT/readyz" >/dev/null 2>&1; then
      say "ready: http://$probe_host:$HTTP_PORT/readyz; MongoDB at $MONGO_URI; reports in PostgreSQL database $pg_db (pipeline $name). Ctrl-C stops."
      break
    fi
    sleep 0.2
  done
fi
rc=0
wait "$child" || rc=$?
while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
child=""
exit "$rc"
