#!/usr/bin/env bash
# Builds fuzz/corpus/<target>/ seed files from the capture corpus (default /work/shared/corpus,
# or $CORPUS_DIR). fuzz/corpus/ is git-ignored; libFuzzer adds what it finds to the same folders.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
corpus="${CORPUS_DIR:-/work/shared/corpus}"
if [[ ! -f "$corpus/pcapio.py" ]]; then
    echo "seed.sh: no capture corpus at $corpus (set CORPUS_DIR); targets start from empty corpora" >&2
    mkdir -p "$here"/corpus/{decode,reassembly,http_session,pipeline}
    exit 0
fi
python3 "$here/seeds.py" "$corpus" "$here/corpus"
