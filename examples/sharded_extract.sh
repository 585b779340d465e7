#!/usr/bin/env bash
# Sharded extraction on one machine (docs/scale.md), offline on scikit-learn's digits: two processes each
# extract one shard, `deephash merge` joins them, and the merged file is indexed and evaluated next to a
# one-process run (same numbers: the features are the same bit for bit).
# The same two commands run as a Slurm array (--shard "$SLURM_ARRAY_TASK_ID/N") or under torchrun
# (no --shard: each rank takes RANK/WORLD_SIZE); see docs/scale.md.
# Usage: examples/sharded_extract.sh [OUTPUT_DIR]   (default artifacts/shards; rerunning overwrites it)
set -euo pipefail
out="${1:-artifacts/shards}"
mkdir -p "$out"
common=(--dataset digits --backbone pixels --batch-size 64 -o "$out/digits.h5" --force)

OMP_NUM_THREADS=1 deephash extract "${common[@]}" --shard 0/2 > /dev/null & first=$!
OMP_NUM_THREADS=1 deephash extract "${common[@]}" --shard 1/2 > /dev/null & second=$!
wait "$first"
wait "$second"
merged=$(deephash merge "$out"/digits.shard-00000-of-00002.h5 "$out"/digits.shard-00001-of-00002.h5 \
  -o "$out/digits.h5" --force)
single=$(deephash extract --dataset digits --backbone pixels --batch-size 64 -o "$out/digits.one-process.h5" --force)

deephash index "$merged" -o "$out/digits.index.h5" --force > /dev/null
for file in "$merged" "$single"; do
  echo "$file: mAP $(deephash evaluate "$file" --json | python -c 'import json, sys; print(json.load(sys.stdin)["map"])')"
done
deephash info "$merged"
