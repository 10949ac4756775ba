#!/usr/bin/env bash
# Smoke-runs every fuzz target in fuzz/ for a few seconds each (FUZZ_SECONDS, default 10).
# cargo-fuzz with `-s none` (no sanitizer) works on stable Rust. Seeds for the CSR target are
# made with openssl so the fuzzer starts from valid requests.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-10}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

seeds=fuzz/corpus/csr
mkdir -p "$seeds"
tmp=$(mktemp -d)
for spec in "ec -pkeyopt ec_paramgen_curve:P-256" "ec -pkeyopt ec_paramgen_curve:P-384" "ed25519" "rsa:2048"; do
    name=$(echo "$spec" | tr -c 'a-zA-Z0-9' '_')
    # shellcheck disable=SC2086
    openssl req -new -newkey $spec -nodes -keyout "$tmp/k" -subj /CN=seed -outform DER -out "$seeds/$name.der" 2>/dev/null
done
rm -rf "$tmp"

for target in $(cargo fuzz list); do
    echo "== fuzz $target (${seconds}s)"
    cargo fuzz run "$target" -s none -- -max_total_time="$seconds" 2>&1 | tail -n 1
done
