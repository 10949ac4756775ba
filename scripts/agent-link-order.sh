#!/usr/bin/env bash
# Writes agent/link/hot-functions.txt: every function of `vouch-agent` (the dist build) that
# runs while two sidecars start, send, receive, sustain a rate and take a burst (the sidecar
# bench at small sizes, both agents under valgrind's callgrind). agent/build.rs hands the list
# to lld, which places those functions side by side, so the code the sidecar keeps resident
# is the code it runs (agent/build.rs says why that matters). Run it after a dependency
# update or a version change, then `bash scripts/benchmarks.sh` to see the sidecar's memory.
# Needs valgrind and lld (apt-get install valgrind lld); takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind ld.lld nm python3; do
    command -v "$tool" >/dev/null || { echo "agent-link-order: needs $tool" >&2; exit 1; }
done
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
agent="$target/dist/vouch-agent"
echo "== building vouch-agent (--profile dist)"
cargo build -q --profile dist -p vouch-agent --bin vouch-agent

work="$(mktemp -d)"
cleanup() {
    pkill -KILL -f -- "--callgrind-out-file=$work/" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# The bench runs this instead of the agent. Valgrind runs in the background so that the
# bench's kill at the end stops this shell, not the agent: stopped with SIGTERM below, the
# agent exits and callgrind writes what ran.
cat > "$work/agent" <<WRAPPER
#!/bin/sh
valgrind -q --tool=callgrind --callgrind-out-file=$work/callgrind.%p --dump-instr=no \
    --compress-strings=no --demangle=no "$agent" "\$@" &
wait
WRAPPER
chmod +x "$work/agent"

echo "== sidecar bench with both agents under callgrind (slow; its figures mean nothing here)"
VOUCH_BENCH_AGENT="$work/agent" VOUCH_BENCH_QUICK=1 VOUCH_BENCH_N=50 VOUCH_BENCH_RATE=100 \
    cargo bench -q -p vouch-agent --bench sidecar >"$work/bench.log" 2>&1 || true
pkill -TERM -f -- "--callgrind-out-file=$work/" || true
for _ in $(seq 1 120); do
    pgrep -f -- "--callgrind-out-file=$work/" >/dev/null || break
    sleep 1
done
runs=$(find "$work" -name 'callgrind.*' | wc -l)
if [ "$runs" -lt 2 ]; then
    echo "agent-link-order: expected two callgrind outputs, got $runs; the bench said:" >&2
    tail -n 30 "$work/bench.log" >&2
    exit 1
fi

# Every function that ran or was called, kept if the binary defines it (not libc's).
grep -h -E '^c?fn=' "$work"/callgrind.* | sed -E 's/^c?fn=//' | LC_ALL=C sort -u >"$work/ran"
nm --defined-only "$agent" | awk '{print $3}' | LC_ALL=C sort -u >"$work/defined"
# The first line names the compiler: the names' hashes change with it (agent/build.rs).
{
    echo "# $(rustc --version)"
    LC_ALL=C comm -12 "$work/ran" "$work/defined"
} >agent/link/hot-functions.txt
echo "agent/link/hot-functions.txt: $(($(wc -l <agent/link/hot-functions.txt) - 1)) functions of $(wc -l <"$work/defined") symbols"
