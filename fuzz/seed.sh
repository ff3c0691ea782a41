#!/usr/bin/env bash
# Seeds the fuzz corpus with the conformance fixtures (the small ones: every invalid file and the
# valid files under 16 KiB).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus/open_verify"
mkdir -p "$corpus"
find "$here/../fixtures" -name '*.ets' -size -16k -exec cp {} "$corpus/" \;
echo "seeded $(ls "$corpus" | wc -l) files into $corpus"
