#!/usr/bin/env bash
# Runs every benchmark and writes BENCHMARKS.md: one table of every figure beside the floor
# measured in the same run (the raw cost of the primitives, or the plain operation the
# figure adds to) and its target, the machine, and each benchmark's whole output.
#
#   bash scripts/benchmarks.sh                  # full sizes (about 15 minutes on 2 cores)
#   bash scripts/benchmarks.sh --quick          # smoke sizes (what tests/run.sh runs)
#   bash scripts/benchmarks.sh --out FILE       # write FILE instead of BENCHMARKS.md
#
# Exits non-zero if a benchmark fails or prints no figure. Timings are figures to read, not
# tests: a missed target is reported, not an error.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

quick=0
out=BENCHMARKS.md
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --out) out=$2; shift ;;
        *) echo "usage: $0 [--quick] [--out FILE]"; exit 64 ;;
    esac
    shift
done

logs=target/benchmarks
mkdir -p "$logs"
# The sidecar benches run the agent as devices run it: the `dist` build (Cargo.toml). Smoke
# runs keep the bench profile's build: they check that every bench works, and the whole
# program build of the dist profile would add minutes to every test run.
if [ "$quick" = 0 ]; then
    echo "== building vouch-agent (--profile dist)"
    cargo build -q --profile dist -p vouch-agent --bin vouch-agent
    VOUCH_BENCH_AGENT="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/dist/vouch-agent"
    export VOUCH_BENCH_AGENT
fi
# name | package | environment (quick) | environment (full)
benches=(
    "enroll|vouch-ca|VOUCH_BENCH_N=500|"
    "enroll_fresh|vouch-ca|VOUCH_BENCH_N=300|"
    "attest|vouch-ca|VOUCH_BENCH_N=500 VOUCH_BENCH_DEVICES=32|"
    "attest_fleet|vouch-ca|VOUCH_BENCH_REGISTRY=20000 VOUCH_BENCH_DEVICES=200|"
    "sweep|vouch-ca|VOUCH_BENCH_DEVICES=10000|"
    "decide|vouch-policy|VOUCH_BENCH_QUICK=1|"
    "seal_open|vouch-envelope|VOUCH_BENCH_QUICK=1|"
    "sidecar|vouch-agent|VOUCH_BENCH_QUICK=1|"
    "revocation|vouch-agent|VOUCH_BENCH_QUICK=1|"
)
for entry in "${benches[@]}"; do
    IFS='|' read -r name package quick_env full_env <<<"$entry"
    environment=$full_env
    [ "$quick" = 1 ] && environment=$quick_env
    echo "== $name ($package${environment:+, $environment})"
    # shellcheck disable=SC2086
    if ! env $environment cargo bench -q -p "$package" --bench "$name" 2>"$logs/$name.err" | tee "$logs/$name.txt"; then
        tail -n 40 "$logs/$name.err"
        echo "$name failed"
        exit 1
    fi
    grep -q "^RESULT	$name	" "$logs/$name.txt" || { echo "$name printed no RESULT line"; exit 1; }
done

{
    echo "# Benchmarks"
    echo
    echo "Written by \`bash scripts/benchmarks.sh$([ "$quick" = 1 ] && echo " --quick")\`; run it again to regenerate this file."
    echo "Each figure stands beside the floor measured in the same run. Timings vary with the"
    echo "machine's neighbours by about ±15%: compare runs, not single figures."
    echo
    echo "| machine | |"
    echo "|---|---|"
    echo "| CPU | $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1) |"
    echo "| cores | $(nproc) |"
    echo "| memory | $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) |"
    echo "| kernel | $(uname -r) |"
    echo "| Rust | $(rustc --version) |"
    echo "| commit | $(git rev-parse --short HEAD 2>/dev/null || echo unknown) |"
    echo "| date | $(date -u +%Y-%m-%dT%H:%MZ) |"
    echo "| sizes | $([ "$quick" = 1 ] && echo "smoke (--quick)" || echo "full") |"
    echo
    echo "| benchmark | figure | value | floor (same run) | ratio | target |"
    echo "|---|---|---|---|---|---|"
    for entry in "${benches[@]}"; do
        name=${entry%%|*}
        grep "^RESULT	" "$logs/$name.txt" | while IFS=$'\t' read -r _ bench figure value floor ratio target; do
            echo "| \`$bench\` | $figure | $value | $floor | $ratio | $target |"
        done
    done
    echo
    echo "## Each benchmark's output"
    for entry in "${benches[@]}"; do
        IFS='|' read -r name package _ _ <<<"$entry"
        echo
        echo "### \`cargo bench -p $package --bench $name\`"
        echo
        echo '```text'
        grep -v "^RESULT	" "$logs/$name.txt"
        echo '```'
    done
} > "$out"
echo "wrote $out"
