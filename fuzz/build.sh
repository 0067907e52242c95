#!/usr/bin/env bash
# Build fastpath instrumented for fuzzing: AddressSanitizer + UndefinedBehaviorSanitizer +
# libFuzzer coverage (-fsanitize=fuzzer-no-link), into fuzz/build/ only. src/ and its build
# products are never touched: src/ is copied to fuzz/build/tree/src (without any .c/.so), or
# exported from a git ref with FUZZ_REF, and `setup.py build_ext --inplace` runs there.
#
# Installs what it needs (Debian bookworm, as root; no-ops when already present):
#   apt: clang-16 libclang-rt-16-dev (the LLVM nearest atheris 3.0.0's bundled libFuzzer/ASan
#        runtime), libssl-dev, libipsec-mb-dev, pkg-config
#   pip: atheris, into the venv fuzz/build/venv (made with --system-site-packages so the
#        interpreter's Cython/numpy are reused; installed there if missing)
#
# Usage: bash fuzz/build.sh            (then: bash fuzz/run.sh, see fuzz/README.md)
# Env:   CLANG=clang-16  PYTHON=python3  ATHERIS_VERSION=3.0.0  FUZZ_UBSAN=1
#        FUZZ_REF=HEAD   build a committed tree (git archive) instead of the work tree's src/
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$FUZZ_DIR")"
BUILD="${FUZZ_BUILD:-$FUZZ_DIR/build}"   # FUZZ_BUILD: another build directory (e.g. an old commit)
TREE="$BUILD/tree"
VENV="$BUILD/venv"
CLANG="${CLANG:-clang-16}"
PYTHON="${PYTHON:-python3}"
ATHERIS_VERSION="${ATHERIS_VERSION:-3.0.0}"
FUZZ_UBSAN="${FUZZ_UBSAN:-1}"
FUZZ_REF="${FUZZ_REF:-}"        # empty: the work tree's src/; else a git ref (e.g. HEAD)

log() { printf '[build.sh] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages
need_apt=()
command -v "$CLANG" >/dev/null 2>&1 || need_apt+=("$CLANG")
llvm_ver="${CLANG#clang-}"
if [ "$llvm_ver" != "$CLANG" ] && ! ls /usr/lib/llvm-"$llvm_ver"/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.a >/dev/null 2>&1; then
    need_apt+=("libclang-rt-$llvm_ver-dev")
fi
[ -e /usr/include/openssl/evp.h ] || need_apt+=(libssl-dev)
[ -e /usr/include/intel-ipsec-mb.h ] || need_apt+=(libipsec-mb-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${need_apt[@]}"
fi

# ---------------------------------------------------------------- python venv + atheris
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import atheris" >/dev/null 2>&1; then
    log "pip install atheris==$ATHERIS_VERSION"
    "$PY" -m pip install -q "atheris==$ATHERIS_VERSION"
fi
# the project's pyproject.toml needs setuptools>=77 (a venv brings its own, older one); the
# harness needs numpy and cryptography>=43 (its hazmat.decrepit TripleDES)
"$PY" - 2>/dev/null <<'PYEOF' || "$PY" -m pip install -q "Cython>=3.1,<4" "setuptools>=77" numpy "cryptography>=43"
import Cython, numpy, setuptools, cryptography
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
assert int(setuptools.__version__.split(".")[0]) >= 77
PYEOF
ATHERIS_LIB="$("$PY" -c 'import atheris; print(atheris.path())')"
[ -e "$ATHERIS_LIB/asan_with_fuzzer.so" ] || { log "atheris has no asan_with_fuzzer.so in $ATHERIS_LIB"; exit 1; }

# ---------------------------------------------------------------- copy the sources
rm -rf "$TREE"
mkdir -p "$TREE/src"
if [ -n "$FUZZ_REF" ]; then
    # a committed tree (read-only git archive): reproducible while others edit the work tree
    log "exporting $FUZZ_REF:src -> $TREE/src"
    git -C "$REPO" archive --format=tar "$FUZZ_REF" src setup.py pyproject.toml README.md \
        | tar -C "$TREE" -xf -
else
    log "copying $REPO/src -> $TREE/src (sources only)"
    tar -C "$REPO/src" --exclude='*.c' --exclude='*.so' --exclude='*.html' --exclude='__pycache__' \
        --exclude='*.egg-info' -cf - . | tar -C "$TREE/src" -xf -
fi
# setup.py plus pyproject.toml (package-dir src/, so --inplace lands in src/fastpath)
# what was built: other work may be changing src/ while fuzzing goes on
{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "source: ${FUZZ_REF:-work tree} (HEAD $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)${FUZZ_REF:+, $FUZZ_REF = $(git -C "$REPO" rev-parse "$FUZZ_REF")})"
    echo "sources sha256: $(cd "$TREE/src" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
    if [ -z "$FUZZ_REF" ]; then
        echo "uncommitted changes under src/ and setup.py at build time:"
        git -C "$REPO" status --short -- src setup.py 2>/dev/null | sed 's/^/  /'
    fi
} > "$BUILD/SNAPSHOT.txt"
if [ -z "$FUZZ_REF" ]; then
    cp "$REPO/setup.py" "$REPO/pyproject.toml" "$TREE/"
    [ -e "$REPO/README.md" ] && cp "$REPO/README.md" "$TREE/"
fi

# ---------------------------------------------------------------- compile
SANFLAGS="-fsanitize=address,fuzzer-no-link"
if [ "$FUZZ_UBSAN" = "1" ]; then
    # the ASan runtime in asan_with_fuzzer.so carries the UBSan handlers; vptr/function need
    # the C++ runtime and are left out; every UB report aborts so libFuzzer records it
    # pointer-overflow is left out too: Cython's own argument glue computes `args + nargs` with
    # args == NULL on every no-argument vectorcall ("applying zero offset to null pointer")
    # and UBSan's function suppressions do not match it reliably; ASan still checks every
    # access the kernel's pointer arithmetic leads to.
    SANFLAGS="$SANFLAGS -fsanitize=undefined -fno-sanitize=vptr,function,pointer-overflow -fno-sanitize-recover=all"
fi
# a fuzzing build: the production -O3 of setup.py stays (it comes last), with frames and
# debug info for readable stacks
export CC="$CLANG"
export LDSHARED="$CLANG -shared"
export CFLAGS="$SANFLAGS -g -fno-omit-frame-pointer -fno-common -Wno-unused-command-line-argument"
export LDFLAGS="$SANFLAGS"
export FASTPATH_IPSECMB="${FASTPATH_IPSECMB:-1}"
log "CC=$CC CFLAGS=$CFLAGS"
( cd "$TREE" && "$PY" setup.py -q build_ext --inplace -j 2 ) > "$BUILD/build.log" 2>&1 || {
    tail -40 "$BUILD/build.log"; log "build failed; full log: $BUILD/build.log"; exit 1; }

# ---------------------------------------------------------------- check the result
sofiles=("$TREE"/src/fastpath/*.so)
[ -e "${sofiles[0]}" ] || { log "no extension was built"; exit 1; }
for so in "${sofiles[@]}"; do
    syms="$(nm -D --undefined-only "$so")"
    [[ "$syms" == *__asan_report_load* ]] || { log "$so is not ASan-instrumented"; exit 1; }
    [[ "$syms" == *__sanitizer_cov_8bit_counters_init* ]] || { log "$so has no coverage counters"; exit 1; }
    [[ "$(readelf -d "$so")" != *libclang_rt* ]] || { log "$so links a sanitizer runtime of its own"; exit 1; }
done
log "built ${#sofiles[@]} instrumented extensions in $TREE/src/fastpath"

# the environment every fuzz command uses (run.sh and repro.sh source this file)
cat > "$BUILD/env.sh" <<EOF
# generated by fuzz/build.sh
export FUZZ_PY="$PY"
# the venv first on PATH: libFuzzer re-executes argv[0] (./fuzz_decap.py, "#!/usr/bin/env python3")
# for -minimize_crash, -jobs and -fork
export PATH="$VENV/bin:\$PATH"
export FUZZ_TREE="$TREE"
export PYTHONPATH="$TREE/src"
export LD_PRELOAD="$ATHERIS_LIB/asan_with_fuzzer.so"
# every Python object through malloc, so ASan puts redzones around bytes/bytearray buffers too
export PYTHONMALLOC=malloc
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=0:handle_segv=1:handle_abort=1:symbolize=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
EOF
log "environment: $BUILD/env.sh"

# a smoke test: the instrumented kernel loads under the preloaded runtime and runs a packet
( source "$BUILD/env.sh" && cd "$FUZZ_DIR" && "$PY" -c '
import fastpath, sys
assert fastpath.__file__.startswith(sys.argv[1]), fastpath.__file__
print("[build.sh] smoke:", fastpath.__file__, fastpath.backends())
sa = fastpath.SAState(spi=0x1234, cipher=fastpath.Cipher.CIPHER_AES_GCM, icv_len=16,
                      enc_key=bytes(20), src=bytes(4), dst=bytes(4))
inner = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17]) + bytes(10)
assert sa.decap(sa.encap(inner)) == inner
' "$TREE" )
log "done"
