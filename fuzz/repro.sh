#!/usr/bin/env bash
# Reproduce or minimise a fuzz_decap.py crash.
#
#   bash fuzz/repro.sh FILE              run the harness once on FILE (prints the stack trace)
#   bash fuzz/repro.sh --minimize FILE   libFuzzer's -minimize_crash; writes FILE.min
#   bash fuzz/repro.sh --hex FILE        print FILE as hex (for a report)
set -euo pipefail
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${FUZZ_BUILD:-$FUZZ_DIR/build}"
[ -e "$BUILD/env.sh" ] || bash "$FUZZ_DIR/build.sh"
# shellcheck disable=SC1091
source "$BUILD/env.sh"

case "${1:-}" in
    --minimize)
        f="$(realpath "$2")"
        cd "$FUZZ_DIR"
        ./fuzz_decap.py -minimize_crash=1 -runs="${RUNS:-20000}" -exact_artifact_path="$f.min" "$f"
        echo "minimised: $f.min ($(stat -c %s "$f.min") bytes)"
        ;;
    --hex)
        "$FUZZ_PY" -c 'import sys; print(open(sys.argv[1], "rb").read().hex())' "$2"
        ;;
    "")
        echo "usage: $0 [--minimize|--hex] FILE" >&2; exit 2
        ;;
    *)
        f="$(realpath "$1")"
        cd "$FUZZ_DIR"
        "$FUZZ_PY" fuzz_decap.py "$f"
        ;;
esac
