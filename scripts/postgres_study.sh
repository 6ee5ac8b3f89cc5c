#!/usr/bin/env bash
# Start (or find running) a local PostgreSQL server for a shared Optuna study and print ONLY its
# SQLAlchemy URL on stdout; every log line goes to stderr. Idempotent: when the server, the user
# and the database exist it just prints the URL. Run as root (the server runs as `postgres`).
#
#   URL="$(bash scripts/postgres_study.sh)"
#   python tune.py --storage "$URL" --study_name mosi_search --n_trials 20 &   # as many workers
#   python tune.py --storage "$URL" --study_name mosi_search --n_trials 20 &   # as you like
#
# Settings (environment): ATTENTION_ROBUST_PG_USER (optuna), ATTENTION_ROBUST_PG_PASSWORD (optuna),
# ATTENTION_ROBUST_PG_DB (optuna), ATTENTION_ROBUST_PG_PORT (5433), ATTENTION_ROBUST_PG_CLUSTER
# (optuna: a dedicated Debian cluster, so the distribution's `main` cluster is left alone),
# ATTENTION_ROBUST_PG_LISTEN (127.0.0.1; use '*' plus a pg_hba.conf rule for workers on other
# machines). Debian's `postgresql` package is installed with apt-get when missing.
set -euo pipefail

PG_USER="${ATTENTION_ROBUST_PG_USER:-optuna}"
PG_PASSWORD="${ATTENTION_ROBUST_PG_PASSWORD:-optuna}"
PG_DB="${ATTENTION_ROBUST_PG_DB:-optuna}"
PG_PORT="${ATTENTION_ROBUST_PG_PORT:-5433}"
CLUSTER="${ATTENTION_ROBUST_PG_CLUSTER:-optuna}"
LISTEN="${ATTENTION_ROBUST_PG_LISTEN:-127.0.0.1}"
HOST=127.0.0.1

log() { echo "postgres_study.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

url() { echo "postgresql+psycopg2://${PG_USER}:${PG_PASSWORD}@${HOST}:${PG_PORT}/${PG_DB}"; }

# the database answers with this user and password already: nothing to do
can_login() {
  command -v psql >/dev/null 2>&1 || return 1
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=3 psql -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
    -qAtc 'SELECT 1' >/dev/null 2>&1
}

if can_login; then
  url
  exit 0
fi

[[ "$(id -u)" -eq 0 ]] || [[ "$(id -un)" == postgres ]] || die "run as root (or as postgres) to start the server"

as_postgres() {
  if [[ "$(id -un)" == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}

if ! command -v pg_createcluster >/dev/null 2>&1 || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || die "apt-get update failed"
  apt-get install -y -q postgresql >&2 || die "apt-get install postgresql failed"
fi

VERSION="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)"
[[ -n "$VERSION" ]] || die "no PostgreSQL server under /usr/lib/postgresql"

cluster_field() {  # column $1 of this cluster's pg_lsclusters line (3: port, 4: status)
  pg_lsclusters -h 2>/dev/null | awk -v v="$VERSION" -v c="$CLUSTER" -v f="$1" '$1 == v && $2 == c { print $f }'
}

if [[ -z "$(cluster_field 2)" ]]; then
  log "creating cluster $VERSION/$CLUSTER on port $PG_PORT"
  locale=C.UTF-8
  locale -a 2>/dev/null | grep -qix 'c.utf-\?8' || locale=C
  pg_createcluster --port "$PG_PORT" --locale "$locale" --encoding UTF8 "$VERSION" "$CLUSTER" \
    -- --auth-local=peer --auth-host=scram-sha-256 >&2 || die "pg_createcluster failed"
fi
PG_PORT="$(cluster_field 3)"

if [[ "$(cluster_field 4)" != online ]]; then
  log "starting cluster $VERSION/$CLUSTER (port $PG_PORT)"
  conf="/etc/postgresql/$VERSION/$CLUSTER"
  pg_conftool "$VERSION" "$CLUSTER" remove listen_addresses >&2 || true
  mkdir -p "$conf/conf.d"
  printf "listen_addresses = '%s'\n" "$LISTEN" >"$conf/conf.d/optuna_study.conf"
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2 || \
    die "pg_ctlcluster $VERSION $CLUSTER start failed; see /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log"
fi

for _ in $(seq 1 60); do
  pg_isready -q -h "$HOST" -p "$PG_PORT" && break
  sleep 0.5
done
pg_isready -q -h "$HOST" -p "$PG_PORT" || die "the server on $HOST:$PG_PORT does not answer"

# user (password kept in sync) and database, created only when missing
as_postgres psql -p "$PG_PORT" -X -q -v ON_ERROR_STOP=1 -v u="$PG_USER" -v p="$PG_PASSWORD" -v d="$PG_DB" >&2 <<'SQL' \
  || die "creating the user and the database failed"
SELECT format('CREATE ROLE %I LOGIN', :'u') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'u', :'p') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'d') \gexec
SQL

can_login || die "cannot log in as $PG_USER to $HOST:$PG_PORT/$PG_DB"
log "PostgreSQL $VERSION/$CLUSTER ready on $HOST:$PG_PORT"
url
