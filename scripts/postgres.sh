#!/usr/bin/env bash
# PostgreSQL on loopback for the tests of the PostgreSQL store (adapters/pg_store.py).
#
#   scripts/postgres.sh start|status
#
# start: starts the machine's cluster(s) when none answers on 127.0.0.1:$PGPORT (Debian's
# `postgresql` package, installed by scripts/system-deps.sh), then makes sure the tests' role
# and database exist: role smile_test (password smile_test, no other rights), database
# smile_test owned by it. The tests connect with postgresql://smile_test:smile_test@127.0.0.1/
# smile_test (GATEWAY_TEST_PG_URL overrides) and work in schemas of their own, dropped after.
# Nothing of the server's configuration is changed; the server is the machine's, so this
# script never stops it.
set -euo pipefail

PGPORT=${PGPORT:-5432}
START_TIMEOUT=${START_TIMEOUT:-30}
ROLE=smile_test
DB=smile_test

log() { printf 'postgres: %s\n' "$*" >&2; }
ready() { pg_isready -q -h 127.0.0.1 -p "$PGPORT" 2>/dev/null; }

as_postgres() {  # a command as the postgres system user (peer authentication on the socket)
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

psql_admin() { as_postgres psql -p "$PGPORT" -v ON_ERROR_STOP=1 -qtA "$@"; }

start() {
  command -v pg_ctlcluster >/dev/null 2>&1 || { log "no PostgreSQL: run scripts/system-deps.sh"; exit 1; }
  if ! ready; then
    for version in $(ls /etc/postgresql); do
      for cluster in $(ls "/etc/postgresql/$version"); do
        log "starting cluster $version/$cluster"
        as_postgres pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
      done
    done
    local waited=0
    until ready; do
      [ "$waited" -ge "$START_TIMEOUT" ] && { log "nothing answers on 127.0.0.1:$PGPORT"; exit 1; }
      sleep 1; waited=$((waited + 1))
    done
  fi
  if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE'"
  fi
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
  fi
  log "ready on 127.0.0.1:$PGPORT, database $DB"
}

case "${1:-}" in
  start) start ;;
  status) if ready; then log "ready on 127.0.0.1:$PGPORT"; else log "not running"; exit 3; fi ;;
  *) echo "usage: $0 start|status" >&2; exit 2 ;;
esac
