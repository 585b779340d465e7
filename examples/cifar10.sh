#!/usr/bin/env bash
# The deephash chain on CIFAR-10: extract -> evaluate -> train-triplet -> train-hash -> encode -> evaluate
# -> plot-tsne -> report. Edit freely; every step is one plain command.
#
# Usage: examples/cifar10.sh [--data-dir DIR] [--backbone NAME] [--weights default|none|PATH]
#                            [--image-size N] [--mean R,G,B] [--std R,G,B] [--bits B] [--out DIR]
#   --data-dir  a folder with cifar-10-batches-py (torchvision downloads it there when reachable),
#               or an image folder DIR/{train,test}/<class>/*.jpg (e.g. the shared JPEG copy).
# Offline, with the shared MobileNetV2 weights:
#   examples/cifar10.sh --data-dir /tmp/cifar10 --weights ../shared/weights/mobilenet_v2-imagenet.pth \
#       --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5
set -euo pipefail

data_dir=data; backbone=mobilenet_v2; weights=default; image_size=112; bits=48; out=artifacts/cifar10
mean=0.485,0.456,0.406; std=0.229,0.224,0.225
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir="$2"; shift 2 ;;
    --backbone) backbone="$2"; shift 2 ;;
    --weights) weights="$2"; shift 2 ;;
    --image-size) image_size="$2"; shift 2 ;;
    --mean) mean="$2"; shift 2 ;;
    --std) std="$2"; shift 2 ;;
    --bits) bits="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"

# The python batches (cifar-10-batches-py) or a folder of JPEGs.
if [ -d "$data_dir/train" ]; then dataset=imagefolder; else dataset=cifar10; fi

features="$out/cifar10-$backbone-$image_size.h5"
deephash extract --dataset "$dataset" --data-dir "$data_dir" --backbone "$backbone" --weights "$weights" \
  --image-size "$image_size" --mean "$mean" --std "$std" -o "$features" --force
deephash evaluate "$features" --metric map,precision@100,knn --record

embeddings=$(deephash train-triplet "$features" --loss facenet --margin 0.2,0.5,1.0 --miner semihard \
  --epochs 20 --early-stopping 5 -o "$out/cifar10.triplet-facenet.h5" --force)
deephash evaluate "$embeddings" --metric map,precision@100,knn --record

model=$(deephash train-hash "$features" --method triplet-ranking --bits "$bits" --miner all \
  --classes-per-batch 10 --samples-per-class 10 --epochs 12 -o "$out/cifar10.hash-triplet-ranking-$bits.model.h5" --force)
codes=$(deephash encode "$features" --model "$model" -o "$out/cifar10.hash-triplet-ranking-$bits.codes.h5" --force)
deephash evaluate "$codes" --metric map,precision@100,knn --record
deephash evaluate "$codes" --protocol pooled --queries-per-class 100 --record     # 1,000 vs 59,000

deephash plot-tsne "$features" -o "$out/cifar10-features.tsne.png" --force
deephash plot-tsne "$embeddings" -o "$out/cifar10.triplet-facenet.tsne.png" --force
deephash report "$out" -o "$out/report.md" --force
cat "$out/report.md"
