#!/usr/bin/env bash
# Replay the corpus once and print libFuzzer's per-function edge coverage for the kernel's
# own functions (cdef functions of sa, esp_in, esp_out, crypto, mb, replay).
#
#   bash fuzz/coverage.sh [CORPUS_DIR]      full listing in fuzz/logs/coverage.txt
#
# Edges counted by -print_coverage include the sanitizers' never-taken error branches, so the
# fractions are lower bounds of the kernel's real branch coverage.
set -euo pipefail
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${FUZZ_BUILD:-$FUZZ_DIR/build}"
[ -e "$BUILD/env.sh" ] || bash "$FUZZ_DIR/build.sh"
# shellcheck disable=SC1091
source "$BUILD/env.sh"
CORPUS="$(realpath "${1:-$FUZZ_DIR/corpus}")"
cd "$FUZZ_DIR"
mkdir -p logs
"$FUZZ_PY" fuzz_decap.py -runs=0 -print_coverage=1 "$CORPUS" > logs/coverage.txt 2>&1 || true
grep -a -E "INITED" logs/coverage.txt || { tail -20 logs/coverage.txt; exit 1; }
grep -a -E "COVERED_FUNC: .* __pyx_f_8fastpath_[0-9]+(sa|esp_in|esp_out|crypto|mb|replay)_" logs/coverage.txt \
    | grep -a -v "scope_struct" \
    | sed -E 's/.*COVERED_FUNC: +hits: +[0-9]+ +edges: +([0-9]+\/[0-9]+) +__pyx_f_8fastpath_[0-9]+(sa|esp_in|esp_out|crypto|mb|replay)_(7SAState_)?([A-Za-z0-9_]+) .*/\2.\4 \1/' \
    | sort -u | column -t
