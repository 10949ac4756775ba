#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests use
# (openssl for interoperability checks, PostgreSQL), starts PostgreSQL, then checks
# formatting and lints, smoke-runs the benchmark, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash tests/postgres.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== benchmark smoke run (exits non-zero if an enrollment fails)"
VOUCH_BENCH_N=500 cargo bench -p vouch-ca --bench enroll
echo "== cargo test"
cargo test --workspace
