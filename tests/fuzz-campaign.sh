#!/usr/bin/env bash
# The long fuzz campaign (not part of tests/run.sh): every fuzz target in fuzz/ for
# FUZZ_MINUTES (default 30) of wall-clock time, FUZZ_JOBS targets at once (default 1), at low
# CPU priority. Each target's libFuzzer output goes to target/fuzz-campaign/TARGET.log; the
# summary prints executions, corpus size and crashes per target. A crash leaves its input in
# fuzz/artifacts/TARGET/ (turn it into a regression test). Exits non-zero if any target crashed.
#
#   bash tests/fuzz-campaign.sh                      # 8 targets x 30 min, one after another
#   FUZZ_JOBS=4 bash tests/fuzz-campaign.sh          # four at a time (an hour on this machine)
#   FUZZ_MINUTES=1 bash tests/fuzz-campaign.sh csr   # one target, one minute
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${FUZZ_MINUTES:-30}
jobs=${FUZZ_JOBS:-1}
out=target/fuzz-campaign
mkdir -p "$out"
touch "$out/.started"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
bash tests/fuzz-smoke.sh >/dev/null # builds every target and makes the CSR seeds
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

run_one() {
    local target=$1
    mkdir -p "fuzz/corpus/$target"
    nice -n 19 cargo fuzz run "$target" -s none -- -max_total_time=$((minutes * 60)) \
        -print_final_stats=1 >"$out/$target.log" 2>&1
    echo $? >"$out/$target.rc"
}

running=0
for target in "${targets[@]}"; do
    run_one "$target" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

failed=0
printf '%-18s %14s %10s %8s %s\n' target executions corpus rc crashes
for target in "${targets[@]}"; do
    log=$out/$target.log
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    rc=$(cat "$out/$target.rc" 2>/dev/null || echo '?')
    crashes=$(find "fuzz/artifacts/$target" -type f -newer "$out/.started" 2>/dev/null | wc -l)
    printf '%-18s %14s %10s %8s %s\n' "$target" "$execs" "$corpus" "$rc" "$crashes"
    [ "$rc" = 0 ] || failed=1
done
exit "$failed"
