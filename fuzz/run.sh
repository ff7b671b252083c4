#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after another, one job
# each, and prints the executions and coverage libFuzzer reports at the end of each run.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     # default: 600 s, all targets
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz when it
# is missing. The corpus grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>);
# a crash is written to fuzz/artifacts/<target>/ and stops that target's run with status 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-600}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(startup_packet frame pre_auth post_auth)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

logs="fuzz/logs"
mkdir -p "$logs"
cargo +nightly fuzz build -O

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log="$logs/$t.log"
    echo "=== $t: ${seconds}s (log: $log)"
    # -max_len: the inputs are small by design (chunks of at most 255 or 16 KiB bytes).
    if cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 >"$log" 2>&1; then
        result="ok"
    else
        result="FAILED (see $log and fuzz/artifacts/$t/)"
        status=1
    fi
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)"
    runs="$(grep -E '^Done [0-9]+ runs' "$log" | tail -n1 || true)"
    [ -n "$done_line" ] || done_line="$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)"
    line="$t: $result; ${runs:-no final line}; ${done_line}"
    echo "$line"
    summary+=("$line")
done

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
