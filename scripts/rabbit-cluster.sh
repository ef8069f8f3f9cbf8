#!/usr/bin/env bash
# A local three-node RabbitMQ cluster on one machine, for trying the daemon against a cluster
# (RABBITMQ_HOSTS) and for the cluster tests, which call this script.
#
#   scripts/rabbit-cluster.sh start  DIR   start three nodes under DIR, join them, print hosts
#   scripts/rabbit-cluster.sh stop   DIR   stop the three nodes (DIR stays)
#   scripts/rabbit-cluster.sh status DIR   cluster_status as seen from node 1
#   scripts/rabbit-cluster.sh kill   DIR N   SIGKILL node N's Erlang VM (a crashed node/pod)
#   scripts/rabbit-cluster.sh revive DIR N   start node N again; it rejoins from its data
#   scripts/rabbit-cluster.sh ctl    DIR N ARGS...   rabbitmqctl ARGS on node N (1..3)
#   scripts/rabbit-cluster.sh queues DIR N ARGS...   rabbitmq-queues ARGS on node N
#
# Each node has its own node name (cdc-<name>-N@localhost), AMQP port, inter-node (dist) port,
# config, data and logs under DIR/nodeN; the three share DIR/.erlang.cookie (HOME=DIR). Node 2
# and 3 join node 1 with `rabbitmqctl join_cluster`. `start` prints the RABBITMQ_HOSTS value
# to give the daemon as its last line, and creates the vhosts in CLUSTER_VHOSTS (guest gets all
# permissions on them; guest may log in from anywhere but loopback anyway, the listeners are on
# 127.0.0.1).
#
# Environment (all optional):
#   CLUSTER_NAME        part of the node names (default: cdc); unique per running cluster
#   CLUSTER_AMQP_PORTS  three AMQP ports (default: "5681 5682 5683")
#   CLUSTER_DIST_PORTS  three inter-node ports (default: the AMQP ports + 20000)
#   CLUSTER_VHOSTS      vhosts to create (default: "bowmark bowmark-concrete")
#   RABBITMQ_BIN        where rabbitmq-server and rabbitmqctl are (default: /usr/lib/rabbitmq/bin)
set -euo pipefail

usage() { sed -n '2,15p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
DIR=$2
shift 2

# `start` records the name and ports in DIR/cluster.env; the other commands read them back.
if [ "$cmd" != start ] && [ -f "$DIR/cluster.env" ]; then
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
fi
BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
NAME=${CLUSTER_NAME:-cdc}
read -r -a AMQP <<<"${CLUSTER_AMQP_PORTS:-5681 5682 5683}"
if [ -n "${CLUSTER_DIST_PORTS:-}" ]; then
  read -r -a DIST <<<"$CLUSTER_DIST_PORTS"
else
  DIST=($((AMQP[0] + 20000)) $((AMQP[1] + 20000)) $((AMQP[2] + 20000)))
fi
read -r -a VHOSTS <<<"${CLUSTER_VHOSTS:-bowmark bowmark-concrete}"

say() { printf 'rabbit-cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
[ "${#AMQP[@]}" = 3 ] && [ "${#DIST[@]}" = 3 ] || die "CLUSTER_AMQP_PORTS and CLUSTER_DIST_PORTS need three ports each"

node() { echo "cdc-$NAME-$1@localhost"; }

# rabbitmqctl (or another CLI tool) against node N with the cluster's cookie.
tool() {
  local t=$1 n=$2
  shift 2
  HOME=$DIR ERL_EPMD_ADDRESS=127.0.0.1 "$BIN/$t" -n "$(node "$n")" "$@"
}
ctl() { tool rabbitmqctl "$@"; }

start_node() {
  local n=$1 d=$DIR/node$1 port=${AMQP[$(($1 - 1))]} dist=${DIST[$(($1 - 1))]}
  mkdir -p "$d"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users = none
cluster_partition_handling = pause_minority
EOF
  echo '[].' >"$d/enabled_plugins"
  : >"$d/rabbitmq-env.conf"
  say "starting $(node "$n") (AMQP 127.0.0.1:$port, dist $dist)"
  (
    cd "$d"
    export HOME=$DIR RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf RABBITMQ_NODENAME=$(node "$n")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_DIST_PORT=$dist ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf RABBITMQ_MNESIA_BASE=$d/mnesia
    export RABBITMQ_LOG_BASE=$d/log RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
    export RABBITMQ_PID_FILE=$d/pid
    nohup "$BIN/rabbitmq-server" >"$d/server.out" 2>&1 &
    echo $! >"$d/server.pid"
  )
}

await_node() {
  local n=$1 d=$DIR/node$1
  for _ in $(seq 1 60); do
    if [ -f "$d/pid" ] && ctl "$n" await_startup --timeout 10 >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$d/server.pid")" 2>/dev/null; then
      die "$(node "$n") exited; see $d/server.out and $d/log"
    fi
    sleep 1
  done
  die "$(node "$n") did not start within 60 s; see $d/log"
}

case $cmd in
start)
  [ -x "$BIN/rabbitmq-server" ] || die "$BIN/rabbitmq-server is absent (install rabbitmq-server)"
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  printf 'CLUSTER_NAME=%q\nCLUSTER_AMQP_PORTS=%q\nCLUSTER_DIST_PORTS=%q\nRABBITMQ_BIN=%q\n' \
    "$NAME" "${AMQP[*]}" "${DIST[*]}" "$BIN" >"$DIR/cluster.env"
  if [ ! -f "$DIR/.erlang.cookie" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie")
    chmod 0400 "$DIR/.erlang.cookie"
  fi
  for n in 1 2 3; do start_node "$n"; done
  for n in 1 2 3; do await_node "$n"; done
  for n in 2 3; do
    if ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(node "$n")\""; then
      continue
    fi
    say "joining $(node "$n") to $(node 1)"
    ctl "$n" stop_app >/dev/null
    ctl "$n" join_cluster "$(node 1)" >/dev/null
    ctl "$n" start_app >/dev/null
  done
  for v in "${VHOSTS[@]}"; do
    ctl 1 add_vhost "$v" >/dev/null 2>&1 || true
    ctl 1 set_permissions -p "$v" guest '.*' '.*' '.*' >/dev/null
  done
  say "cluster of $(node 1), $(node 2), $(node 3) is up"
  echo "127.0.0.1:${AMQP[0]},127.0.0.1:${AMQP[1]},127.0.0.1:${AMQP[2]}"
  ;;
stop)
  DIR=$(cd "$DIR" && pwd)
  for n in 3 2 1; do
    pidfile=$DIR/node$n/server.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    ctl "$n" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    say "stopped $(node "$n")"
  done
  ;;
status)
  ctl 1 cluster_status
  ;;
kill)
  [ $# -ge 1 ] || usage
  d=$DIR/node$1
  [ -f "$d/pid" ] || die "$(node "$1") is not running"
  kill -KILL "$(cat "$d/pid")"
  rm -f "$d/pid"
  say "killed $(node "$1")"
  ;;
revive)
  [ $# -ge 1 ] || usage
  DIR=$(cd "$DIR" && pwd)
  start_node "$1"
  await_node "$1"
  say "$(node "$1") is back"
  ;;
ctl)
  [ $# -ge 1 ] || usage
  n=$1; shift
  ctl "$n" "$@"
  ;;
queues)
  [ $# -ge 1 ] || usage
  n=$1; shift
  tool rabbitmq-queues "$n" "$@"
  ;;
*) usage ;;
esac
