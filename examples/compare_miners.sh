#!/usr/bin/env bash
# Issue 4: every mining strategy (and the random triplets of train-triplet) with the FaceNet loss at
# its validated margin, on one features file; then a table and a convergence plot.
# Usage: examples/compare_miners.sh FEATURES.h5 MARGIN [OUT_DIR] [EPOCHS]
#   e.g. examples/compare_miners.sh artifacts/cifar10-mobilenet_v2.h5 0.2 artifacts/miners 20
set -euo pipefail
features="$1"; margin="$2"; out="${3:-artifacts/miners}"; epochs="${4:-20}"
mkdir -p "$out"
for miner in random all hardest semihard random-hard distance-weighted; do
  deephash train-triplet "$features" --loss facenet --margin "$margin" --miner "$miner" \
    --classes-per-batch 10 --samples-per-class 25 --epochs "$epochs" --seed 0 \
    -o "$out/miner-$miner.h5" --force > /dev/null 2> "$out/miner-$miner.log"
  deephash evaluate "$out/miner-$miner.h5" --metric map,precision@100,knn --json > "$out/miner-$miner.eval.json"
done
python3 "$(dirname "$0")/miner_table.py" "$out"
