#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the tests use
# (openssl for interoperability checks, git for policy repositories, swtpm and tpm2-tools for
# the attestation tests, libtss2-dev for the agent's TPM access, PostgreSQL, promtool from
# Debian's prometheus package, and in a Python virtual environment the independent checkers of
# tests/interop/requirements.txt), starts PostgreSQL, then checks formatting and lints,
# smoke-runs the benchmark and the fuzz targets, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup installs cargo here; make sure a non-login shell finds it.
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v git >/dev/null || need+=(git)
command -v swtpm >/dev/null || need+=(swtpm swtpm-tools)
command -v tpm2_quote >/dev/null || need+=(tpm2-tools)
# tss-esapi (vouch-agent's TPM access) links libtss2 and finds it with pkg-config.
pkg-config --exists tss2-esys 2>/dev/null || need+=(libtss2-dev)
# `promtool check metrics` checks /metrics (the interop tests).
command -v promtool >/dev/null || need+=(prometheus)
# vouch-agent links with lld when it is installed, which lays out the code a sidecar runs
# side by side (agent/build.rs).
command -v ld.lld >/dev/null || need+=(lld)
# The sidecars' MQTT delivery is tested against a real broker (started by the tests).
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# `systemd-analyze verify` checks the systemd units in deploy/ (the deployment tests).
command -v systemd-analyze >/dev/null || need+=(systemd)
# The README's first command (scripts/scenario.sh) and the operator guide, both run by the
# tests, use curl and jq; `script` (bsdutils) gives the import test a terminal.
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
command -v script >/dev/null || need+=(bsdutils)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash tests/postgres.sh

# The interop tests run pyca/cryptography, py-spiffe, openapi-spec-validator, schemathesis and
# prometheus_client (pinned in tests/interop/requirements.txt) from this environment.
venv=target/interop-venv
if ! cmp -s tests/interop/requirements.txt "$venv/requirements.txt"; then
    echo "installing the interop checkers into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
    cp tests/interop/requirements.txt "$venv/requirements.txt"
fi
export VOUCH_PYTHON="$PWD/$venv/bin/python"

# A one-shot build gains nothing from incremental state, which is as large as the build itself.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk before the build: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== benchmark smoke runs (exit non-zero if a benchmark fails, e.g. an enrollment fails or indexed and full decisions differ)"
bash scripts/benchmarks.sh --quick --out target/BENCHMARKS.smoke.md
echo "== fuzz targets, briefly"
bash tests/fuzz-smoke.sh
echo "== cargo test"
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: the sum over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
echo "== disk after the run: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free, target/ $(du -sh target | cut -f1)"
exit "$status"
