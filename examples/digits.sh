#!/usr/bin/env bash
# The main job, offline: the whole deephash chain on scikit-learn's digits (ships with scikit-learn).
#   extract -> evaluate -> train-triplet -> evaluate -> train-hash -> encode -> evaluate -> plot-tsne -> report,
#   then index the codes and search them (test digits as queries), drawing the results into a grid PNG
# Usage: examples/digits.sh [OUTPUT_DIR]   (default artifacts/digits; rerunning overwrites it)
set -euo pipefail
out="${1:-artifacts/digits}"
mkdir -p "$out"
dh() { deephash "$@"; }

features=$(dh extract --dataset digits --backbone pixels -o "$out/digits-pixels.h5" --force)
dh evaluate "$features" --metric map,precision@100,knn --record > /dev/null

embeddings=$(dh train-triplet "$features" --loss facenet --margin 0.1,0.2,0.5 --epochs 15 --dim 32 --hidden 128 \
  --miner semihard --classes-per-batch 10 --samples-per-class 16 \
  --save-model "$out/digits.triplet-facenet.model.h5" -o "$out/digits.triplet-facenet.h5" --force)
dh evaluate "$embeddings" --metric map,precision@100,knn --record > /dev/null

model=$(dh train-hash "$features" --method triplet-ranking --bits 32 --epochs 15 --hidden 128 \
  -o "$out/digits.hash-triplet-ranking-32.model.h5" --force)
codes=$(dh encode "$features" --model "$model" -o "$out/digits.hash-triplet-ranking-32.codes.h5" --force)
dh evaluate "$codes" --metric map,precision@100,knn --record > /dev/null

dh plot-tsne "$embeddings" -o "$out/digits.triplet-facenet.tsne.png" --force > /dev/null
dh report "$out" -o "$out/report.md" --force > /dev/null
cat "$out/report.md"

# Search: an exact Hamming index over the train codes, queried with the test digits' codes.
index=$(dh index "$codes" -o "$out/digits.hash-triplet-ranking-32.index.h5" --force)
dh search "$index" --queries "$codes" --query-split test -k 8 --grid "$out/digits.search.png" --force \
  > "$out/digits.search.txt"
echo
echo "search: $(grep -c '^query' "$out/digits.search.txt") test digits answered; first query:"
sed -n '1,10p' "$out/digits.search.txt"
echo "grid of the first 20 queries: $out/digits.search.png"
