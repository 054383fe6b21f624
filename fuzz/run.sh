#!/usr/bin/env bash
# Usage: fuzz/run.sh SECONDS [TARGET...]
# Builds the targets, the seed corpora (seed.sh), then fuzzes each target (default: all) for
# SECONDS, one at a time and under `nice` (the machine is shared). Exits non-zero if any target
# finds a crash; the crashing input is in fuzz/artifacts/<target>/ (minimize with
# `cargo +nightly fuzz tmin`).
# KEEP_GOING=1: fuzz the full SECONDS even after crashes (libFuzzer fork mode, -ignore_crashes),
# collecting every crashing input under fuzz/artifacts/<target>/; still exits non-zero.
# FUZZ_SANITIZER=address|none (default none): with address, the Rust code is built with
# AddressSanitizer, in its own target dir (fuzz/target/asan, so that switching does not rebuild
# everything). The bundled C libraries are not instrumented: on nightly, cargo tells build
# scripts CARGO_CFG_SANITIZE=address and cc-rs then adds -fsanitize=address to the C code it
# compiles (zstd-sys), whose libzstd.a librdkafka's configure (rdkafka's zstd feature) links its
# test programs against without the ASan runtime: "checking for libzstd... failed", configure
# fails. CFLAGS_<target triple> = -fno-sanitize=address, which cc-rs reads and librdkafka's
# configure does not, turns that off again.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(decode reassembly http_session pipeline capture spool_scan http2 geneve)
fi
cd "$here/.."
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 1
fi
san="${FUZZ_SANITIZER:-none}"
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
build=(-s "$san")
target_dir="$here/target"
if [[ "$san" == address ]]; then
    target_dir="$here/target/asan"
    build+=(--target-dir "$target_dir")
    cflags_var="CFLAGS_${triple//-/_}"
    export "$cflags_var=${!cflags_var:-} -fno-sanitize=address"
fi
nice cargo +nightly fuzz build "${build[@]}" || exit 1
SPOOL_SCAN_BIN="$target_dir/$triple/release/spool_scan" "$here/seed.sh" || exit 1
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
    if ! nice cargo +nightly fuzz run "${build[@]}" "$t" "$here/corpus/$t" "${regressions[@]}" -- \
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
