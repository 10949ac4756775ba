#!/usr/bin/env bash
# Makes the local PostgreSQL ready for the test suite: installs it if missing (Debian),
# starts the cluster, and creates the `vouch` role (password `vouch`, CREATEDB) that the
# tests connect as. Idempotent. The tests read VOUCH_TEST_POSTGRES_URL, by default
# postgres://vouch:vouch@127.0.0.1:5432/postgres, and make a fresh database per test.
set -euo pipefail

if [ ! -d /usr/lib/postgresql ] || ! command -v pg_ctlcluster >/dev/null; then
    echo "installing PostgreSQL..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1 "/" $2}' | grep -qx "$version/main"; then
    pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | awk '$1 == "'"$version"'" && $2 == "main" {print $4}' | grep -qx online; then
    pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 && break
    sleep 1
done
pg_isready -h 127.0.0.1

if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'vouch'\"" | grep -qx 1; then
    su postgres -c "psql -q -c \"CREATE ROLE vouch LOGIN PASSWORD 'vouch' CREATEDB\""
fi
echo "PostgreSQL $version ready (role vouch)"
