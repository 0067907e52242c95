#!/usr/bin/env bash
# Run fuzz_decap.py under ASan+UBSan with libFuzzer, one process per worker on a shared corpus.
#
#   bash fuzz/run.sh [RUNS_PER_WORKER]        default 600000 per worker, 2 workers
#
# Env: WORKERS=2  MAX_LEN=4096  SEED=1  KEEP_GOING=1 (restart a worker after a crash, with
#      the runs it still owes, so one finding does not end the campaign)  EXTRA="-flag=..."
# Writes: fuzz/corpus/ (shared, grows), fuzz/crashes/ (artifacts), fuzz/logs/worker-N.log,
#         fuzz/logs/summary.txt
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNS="${1:-600000}"
WORKERS="${WORKERS:-2}"
MAX_LEN="${MAX_LEN:-4096}"
SEED="${SEED:-1}"
KEEP_GOING="${KEEP_GOING:-1}"
EXTRA="${EXTRA:-}"

cd "$FUZZ_DIR"
BUILD="${FUZZ_BUILD:-$FUZZ_DIR/build}"
[ -e "$BUILD/env.sh" ] || bash build.sh
# shellcheck disable=SC1091
source "$BUILD/env.sh"
mkdir -p corpus crashes logs
if [ -z "$(ls -A corpus)" ]; then
    "$FUZZ_PY" make_seeds.py corpus
fi

worker() {
    local i="$1" owed="$RUNS" done_total=0 attempt=0 rc n
    local log="logs/worker-$i.log"
    : > "$log"
    while [ "$owed" -gt 0 ] && [ "$attempt" -lt 25 ]; do
        attempt=$((attempt + 1))
        set +e
        # shellcheck disable=SC2086
        "$FUZZ_PY" fuzz_decap.py -runs="$owed" -max_len="$MAX_LEN" -seed=$((SEED * 1000 + i * 100 + attempt)) \
            -artifact_prefix=crashes/ -print_final_stats=1 -rss_limit_mb=6144 -timeout=60 \
            -reload=1 $EXTRA corpus >> "$log" 2>&1
        rc=$?
        set -e
        n="$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')"
        n="${n:-0}"
        done_total=$((done_total + n))
        owed=$((RUNS - done_total))
        echo "[run.sh] worker $i attempt $attempt: rc=$rc executed=$n total=$done_total" >> "$log"
        if [ "$rc" -ne 0 ] && [ "$KEEP_GOING" != "1" ]; then
            break
        fi
        [ "$rc" -eq 0 ] && break
    done
    echo "$done_total" > "logs/worker-$i.total"
}

start=$(date +%s)
echo "[run.sh] $(date -u +%FT%TZ): $WORKERS workers x $RUNS runs, max_len $MAX_LEN, corpus $(ls corpus | wc -l) files"
pids=()
for i in $(seq 0 $((WORKERS - 1))); do
    worker "$i" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
end=$(date +%s)

total=0
{
    echo "date: $(date -u +%FT%TZ)"
    echo "build: $(head -3 "$BUILD/SNAPSHOT.txt" | tr '\n' ' ')"
    echo "command: WORKERS=$WORKERS MAX_LEN=$MAX_LEN SEED=$SEED bash fuzz/run.sh $RUNS"
    for i in $(seq 0 $((WORKERS - 1))); do
        t="$(cat "logs/worker-$i.total")"
        total=$((total + t))
        last="$(grep -a -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "logs/worker-$i.log" | tail -1 | cut -c1-160 || true)"
        crashes="$(grep -a -c 'Test unit written' "logs/worker-$i.log" || true)"
        echo "worker $i: executions $t, crashes $crashes, last: $last"
    done
    echo "total executions: $total in $((end - start)) s ($(( total / (end - start > 0 ? end - start : 1) )) exec/s)"
    echo "corpus: $(ls corpus | wc -l) files; crashes/: $(ls crashes | wc -l) files"
} | tee logs/summary.txt
