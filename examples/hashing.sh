#!/usr/bin/env bash
# Issue 5: hash codes at 12-64 bits for each method variant, evaluated by Hamming ranking.
# Usage: examples/hashing.sh FEATURES.h5 [OUT_DIR] [MINER] [EPOCHS]
#   MINER: triplet source for every run (random or a miner name), default all.
set -euo pipefail
features="$1"; out="${2:-artifacts/hashing}"; miner="${3:-all}"; epochs="${4:-20}"
mkdir -p "$out"
# P×K = 10×10: batch-all on 100-item batches mines 81k triplets per batch (10×25 would mine 1.35M,
# ~7× the cost per epoch on a CPU).
common=(--miner "$miner" --classes-per-batch 10 --samples-per-class 10 --epochs "$epochs" --early-stopping 5 --seed 0)
for bits in 12 16 24 32 48 64; do
  for variant in dtsh-paper dtsh-schedule triplet-ranking; do
    case "$variant" in
      dtsh-paper) method=(--method dtsh) ;;                                   # alpha = bits/2, lambda = 1
      dtsh-schedule) method=(--method dtsh --lam-warmup 3 --alpha-ramp 1:16:3) ;;
      triplet-ranking) method=(--method triplet-ranking) ;;                   # margin bits/4, tanh outputs
    esac
    name="$out/hash-$variant-$bits"
    deephash train-hash "$features" --bits "$bits" "${method[@]}" "${common[@]}" -o "$name.model.h5" --force > /dev/null \
      2> "$name.log"
    deephash encode "$features" --model "$name.model.h5" -o "$name.codes.h5" --force > /dev/null
    deephash evaluate "$name.codes.h5" --metric map,precision@100,knn --json > "$name.eval.json"
  done
done
python3 "$(dirname "$0")/hash_table.py" "$out"
