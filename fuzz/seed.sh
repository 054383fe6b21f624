#!/usr/bin/env bash
# Builds fuzz/corpus/<target>/ seed files: from the capture corpus (default /work/shared/corpus,
# or $CORPUS_DIR) for every target but spool_scan, whose seeds are segment files the real spool
# writes, made by the built spool_scan binary ($SPOOL_SCAN_BIN, default the build without a
# sanitizer; run.sh builds first). fuzz/corpus/ is git-ignored; libFuzzer adds what it finds to
# the same folders.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
corpus="${CORPUS_DIR:-/work/shared/corpus}"
mkdir -p "$here"/corpus/{decode,reassembly,http_session,pipeline,capture,spool_scan}
if [[ -f "$corpus/pcapio.py" ]]; then
    python3 "$here/seeds.py" "$corpus" "$here/corpus"
else
    echo "seed.sh: no capture corpus at $corpus (set CORPUS_DIR); those targets start from empty corpora" >&2
fi
bin="${SPOOL_SCAN_BIN:-$here/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release/spool_scan}"
if [[ -x "$bin" ]]; then
    MIRROR_FUZZ_SPOOL_SEEDS="$here/corpus/spool_scan" "$bin" 2>/dev/null
    echo "spool_scan: $(ls "$here/corpus/spool_scan" | grep -c '^spool-seed-') seed files"
else
    echo "seed.sh: no spool_scan binary at $bin (cargo +nightly fuzz build first); spool_scan starts from an empty corpus" >&2
fi
