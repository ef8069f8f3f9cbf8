#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ run on localhost for bowmark-cdc, then create its vhosts
# (bowmark, bowmark-concrete) and databases (bowmark_reports_paving, bowmark_reports_concrete).
# Also installs Prometheus (promtool and the server, never started as a service): the alert and
# dashboard checks and the monitoring test run them.
#
# - running already: nothing to do;
# - installed but stopped: start them (Debian's pg_ctlcluster, rabbitmq-server -detached);
# - missing: install them with apt (as root, or through sudo) on Debian/Ubuntu;
# - otherwise: print exactly what to install and exit 1.
# Idempotent; safe to run twice.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER_ADMIN=${PGUSER_ADMIN:-postgres}
VHOSTS=(bowmark bowmark-concrete)
DATABASES=(bowmark_reports_paving bowmark_reports_concrete)

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || return 1
}

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }

pg_cluster_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

allow_local_trust() {
  # A fresh Debian cluster asks for a password on 127.0.0.1; the local services are for
  # development and tests, so let local TCP connections in without one.
  local ver hba
  ver=$(pg_cluster_version); hba=/etc/postgresql/$ver/main/pg_hba.conf
  [ -f "$hba" ] || return 0
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    say "allowing trust auth for 127.0.0.1 and ::1 in $hba"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
  fi
}

ensure_postgres() {
  if pg_up; then say "PostgreSQL is running on $PGHOST:$PGPORT"; return; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql postgresql-client || die "PostgreSQL is missing: install it with 'apt-get install postgresql' (Debian/Ubuntu), then run this script again"
    allow_local_trust
  fi
  local ver; ver=$(pg_cluster_version)
  [ -n "$ver" ] || die "no PostgreSQL cluster under /etc/postgresql: run 'pg_createcluster <version> main'"
  say "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || die "PostgreSQL did not start; see /var/log/postgresql/"
}

psql_admin() {
  if psql -X -q -h "$PGHOST" -p "$PGPORT" -U "$PGUSER_ADMIN" -d postgres -c 'select 1' >/dev/null 2>&1; then
    psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U "$PGUSER_ADMIN" -d postgres "$@"
  elif [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1; then
    allow_local_trust
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"
  else
    die "cannot log in to PostgreSQL as $PGUSER_ADMIN on $PGHOST:$PGPORT; allow trust auth for 127.0.0.1 in pg_hba.conf"
  fi
}

rabbit_up() { rabbitmqctl -q status >/dev/null 2>&1; }

ensure_rabbitmq() {
  if rabbit_up; then say "RabbitMQ is running"; return; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server || die "RabbitMQ is missing: install it with 'apt-get install rabbitmq-server' (Debian/Ubuntu), then run this script again"
  fi
  if ! rabbit_up; then
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  rabbitmqctl -q await_startup --timeout 120 >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
  rabbit_up || die "RabbitMQ did not start; see /var/log/rabbitmq/"
}

ensure_vhosts() {
  local existing; existing=$(rabbitmqctl -q list_vhosts name 2>/dev/null)
  for v in "${VHOSTS[@]}"; do
    if ! grep -qx -- "$v" <<<"$existing"; then
      say "creating RabbitMQ vhost $v"
      rabbitmqctl -q add_vhost "$v" >/dev/null
    fi
    rabbitmqctl -q set_permissions -p "$v" guest '.*' '.*' '.*' >/dev/null
  done
}

ensure_databases() {
  for d in "${DATABASES[@]}"; do
    if [ "$(psql_admin -At -c "select 1 from pg_database where datname = '$d'")" != 1 ]; then
      say "creating database $d"
      psql_admin -c "CREATE DATABASE \"$d\""
    fi
  done
}

ensure_prometheus() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then return; fi
  # The Debian package enables a system service on :9090; the tests start their own servers.
  if ! apt_install prometheus; then
    # Not fatal: the PromQL checks and the monitoring test then skip, saying why.
    say "WARNING: Prometheus is missing and could not be installed ('apt-get install prometheus' on Debian/Ubuntu): alert and dashboard checks will be skipped"
    return
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

ensure_prometheus
ensure_postgres
ensure_rabbitmq
ensure_vhosts
ensure_databases
prom=$(promtool --version 2>/dev/null | head -n 1 || true)
say "ready: PostgreSQL $PGHOST:$PGPORT (databases ${DATABASES[*]}), RabbitMQ 127.0.0.1:5672 (vhosts ${VHOSTS[*]}), ${prom:-no Prometheus}"
