#!/usr/bin/env bash
# Usage: fuzz/run.sh SECONDS [TARGET...]
# Builds the seed corpora (seed.sh), then fuzzes each target (default: all) for SECONDS, one at a
# time and under `nice` (the machine is shared). Exits non-zero if any target finds a crash; the
# crashing input is in fuzz/artifacts/<target>/ (minimize with `cargo +nightly fuzz tmin`).
# KEEP_GOING=1: fuzz the full SECONDS even after crashes (libFuzzer fork mode, -ignore_crashes),
# collecting every crashing input under fuzz/artifacts/<target>/; still exits non-zero.
# FUZZ_SANITIZER=address|none (default none): with AddressSanitizer, cc-rs instruments the bundled
# C libraries too (zstd-sys), and librdkafka's configure then fails its link checks. The crate is
# safe Rust: panics, overflow checks and debug assertions are what the targets catch.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(decode reassembly http_session pipeline)
fi
cd "$here/.."
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 1
fi
"$here/seed.sh" || exit 1
san="${FUZZ_SANITIZER:-none}"
nice cargo +nightly fuzz build -s "$san" || exit 1
failed=()
for t in "${targets[@]}"; do
    echo "=== fuzzing $t for ${secs}s"
    mkdir -p "$here/corpus/$t"
    extra=()
    if [[ "${KEEP_GOING:-0}" == 1 ]]; then
        extra=(-fork=1 -ignore_crashes=1)
    fi
    before=$(ls "$here/artifacts/$t" 2>/dev/null | wc -l)
    # The regression inputs (crashes found before, now fixed) run first, as a second corpus.
    regressions=()
    if [[ -d "$here/regressions/$t" ]]; then
        regressions=("$here/regressions/$t")
    fi
    if ! nice cargo +nightly fuzz run -s "$san" "$t" "$here/corpus/$t" "${regressions[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}"; then
        failed+=("$t")
    elif [[ $(ls "$here/artifacts/$t" 2>/dev/null | wc -l) -gt $before ]]; then
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crashes in: ${targets[*]}"
