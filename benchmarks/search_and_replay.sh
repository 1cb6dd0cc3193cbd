#!/usr/bin/env bash
# The product's acceptance check on this machine, printing its figures:
#   1. `autotune search MODEL --n-trials N` in a fresh folder, timed;
#   2. the best configuration against the reference (from the search's own output);
#   3. the exported config replayed by a plain DeepSpeed script (benchmarks/replay_export.py)
#      REPLAYS times, each printing its throughput and its ratio to the trial's figure.
# Usage: bash benchmarks/search_and_replay.sh [MODEL.py] [N] [REPLAYS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
model=$(realpath "${1:-$here/examples/digits_mlp.py}")
n_trials=${2:-12}
replays=${3:-3}
work=$(mktemp -d)
cd "$work"
echo "workdir: $work"
start=$(date +%s)
autotune search "$model" --n-trials "$n_trials" | tee search.log
echo "search wall time: $(( $(date +%s) - start )) s for --n-trials $n_trials"
autotune export -o best
processes=$(python3 -c "import json; print(json.load(open('best/launch.json'))['processes'])")
samples=$(python3 -c "import sqlite3,json; print(json.loads(sqlite3.connect('trials/autotune.db').execute(\"select value_json from study_user_attributes where key='train_samples'\").fetchone()[0]))")
for i in $(seq "$replays"); do
  DS_ACCELERATOR=cpu OMP_NUM_THREADS=$(python3 -c "import json; print(json.load(open('best/launch.json'))['threads_per_process'] or '')") \
    deepspeed --num_gpus "$processes" "$here/benchmarks/replay_export.py" \
    --model "$model" --export best --train-samples "$samples" 2>&1 | grep '^replay:'
  # DeepSpeed's CPU comm op leaves a 66 MB /dev/shm segment per rank (default port 29500).
  rm -f /dev/shm/deepspeed_allreduce_buffer_"$(id -u)"_*_29500_*
done
