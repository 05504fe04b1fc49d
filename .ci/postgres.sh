#!/usr/bin/env bash
# A PostgreSQL server for the tests (idempotent): Debian's cluster `15/fleetctl` on 127.0.0.1:5433,
# a role and a database `fleetctl` (password fleetctl, CREATEDB: tests make a database each).
# Installs PostgreSQL with apt where it is missing (as root). Prints the line to eval:
#   eval "$(.ci/postgres.sh)"   # -> export FLEETCTL_TEST_PG_URL=postgresql+psycopg://...
set -euo pipefail
VERSION="${PG_VERSION:-15}"
CLUSTER="${PG_CLUSTER:-fleetctl}"
PORT="${PG_PORT:-5433}"

if ! command -v pg_createcluster >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-common >&2
    VERSION="$(ls /usr/lib/postgresql | sort -n | tail -1)"
  else
    echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql, as root)" >&2
    exit 1
  fi
fi
[ -d "/usr/lib/postgresql/$VERSION" ] || VERSION="$(ls /usr/lib/postgresql | sort -n | tail -1)"

if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$VERSION/$CLUSTER"; then
  # the server refuses to run as root: the cluster belongs to the postgres user (Debian's tools switch)
  pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" -- --auth-local=trust --auth-host=scram-sha-256 >&2
  # tests create many short-lived databases: keep the server quick and small
  pg_conftool "$VERSION" "$CLUSTER" set fsync off >&2
  pg_conftool "$VERSION" "$CLUSTER" set synchronous_commit off >&2
  pg_conftool "$VERSION" "$CLUSTER" set full_page_writes off >&2
fi
if ! pg_lsclusters -h | awk -v c="$CLUSTER" -v v="$VERSION" '$1==v && $2==c {print $4}' | grep -qx online; then
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

psql_pg() { su postgres -c "psql -X -q -v ON_ERROR_STOP=1 -p $PORT -d postgres $*" >&2; }
if [ "$(su postgres -c "psql -X -tA -p $PORT -d postgres -c \"SELECT 1 FROM pg_roles WHERE rolname='fleetctl'\"")" != 1 ]; then
  psql_pg "-c \"CREATE ROLE fleetctl LOGIN PASSWORD 'fleetctl' CREATEDB\""
fi
if [ "$(su postgres -c "psql -X -tA -p $PORT -d postgres -c \"SELECT 1 FROM pg_database WHERE datname='fleetctl'\"")" != 1 ]; then
  psql_pg "-c \"CREATE DATABASE fleetctl OWNER fleetctl\""
fi
echo "export FLEETCTL_TEST_PG_URL=postgresql+psycopg://fleetctl:fleetctl@127.0.0.1:$PORT/fleetctl"
