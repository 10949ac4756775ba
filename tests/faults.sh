#!/usr/bin/env bash
# The long fault and load scenarios (not part of tests/run.sh, which runs small versions):
# 100 kill -9 of the server during enrollments and attestations on SQLite and on PostgreSQL,
# PostgreSQL stopped and started under load (this stops the machine's cluster: nothing else
# may use it meanwhile), and an enrollment storm of 10,000 devices, each on a new TLS
# connection. Prints each scenario's figures; exits non-zero if any check fails.
#
#   bash tests/faults.sh
#   VOUCH_FAULT_KILLS=20 VOUCH_STORM_DEVICES=2000 bash tests/faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/postgres.sh
# 10,000 clients and their server connections need more than the default 1,024 descriptors.
ulimit -n "$(ulimit -Hn)"
export VOUCH_FAULT_KILLS=${VOUCH_FAULT_KILLS:-100}
export VOUCH_STORM_DEVICES=${VOUCH_STORM_DEVICES:-10000}
export VOUCH_PG_RESTART=${VOUCH_PG_RESTART:-1}
VOUCH_PG_CLUSTER=${VOUCH_PG_CLUSTER:-"$(ls /usr/lib/postgresql | sort -n | tail -1) main"}
export VOUCH_PG_CLUSTER
cargo test --release -p vouch-ca --test faults -- --nocapture --test-threads 1
