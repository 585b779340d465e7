#!/usr/bin/env bash
# End-to-end fine-tuning on CIFAR-10, the runs behind the README's fine-tuning table:
# a 128-d FaceNet/semi-hard embedding and 48-bit triplet-ranking codes, each trained with the backbone in
# two stages (stage 2: --init from stage 1's best model, learning rates / 10, 2 epochs), plus codes trained on
# the fine-tuned embedding's backbone; each extracted
# for every split and evaluated (test 10,000 vs train 50,000).
#
# Usage: examples/finetune_cifar10.sh [--data-dir DIR] [--weights PATH] [--epochs N] [--hash-epochs N]
#                                     [--device auto|cpu|cuda] [--out DIR]
#   --data-dir  cifar-10-batches-py's parent, or an image folder DIR/{train,test}/<class>/*.jpg.
# Offline, with the shared MobileNetV2 weights (2-core CPU: ~8-15 min per epoch and run):
#   examples/finetune_cifar10.sh --data-dir /tmp/cifar10 --weights ../shared/weights/mobilenet_v2-imagenet.pth
# Each training checkpoints every epoch and runs with --resume: re-run the script after a kill (or with a
# larger --epochs) and it continues where it stopped.
set -euo pipefail

data_dir=data; weights=default; epochs=8; hash_epochs=4; device=auto; out=artifacts/finetune
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir="$2"; shift 2 ;;
    --weights) weights="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --hash-epochs) hash_epochs="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
if [ -d "$data_dir/train" ]; then dataset=imagefolder; else dataset=cifar10; fi

# The shared weights expect RGB in [-1, 1]; torchvision's own ImageNet weights use ImageNet's mean/std.
if [ "$weights" = default ]; then norm=(); else norm=(--mean 0.5,0.5,0.5 --std 0.5,0.5,0.5); fi
common=(--dataset "$dataset" --data-dir "$data_dir" --device "$device")
model=(--weights "$weights" "${norm[@]}" --image-size 112)

metrics=(--metric map,map@1000,precision@100,knn --record)

# Embedding: FaceNet loss, the mining comparison's best miner (semi-hard), its validated margin 1.0.
triplet=(--objective triplet --loss facenet --margin 1.0 --miner semihard --classes-per-batch 10
         --samples-per-class 25 --dim 128)
deephash finetune "${common[@]}" "${model[@]}" "${triplet[@]}" --epochs "$epochs" \
  --lr 1e-3 --lr-backbone 1e-4 -o "$out/ft-facenet.model.h5" --resume
deephash finetune "${common[@]}" --init "$out/ft-facenet.model.h5" "${triplet[@]}" --epochs 2 \
  --lr 1e-4 --lr-backbone 1e-5 -o "$out/ft-facenet-lr.model.h5" --resume
for stage in ft-facenet ft-facenet-lr; do
  deephash extract "${common[@]}" --model "$out/$stage.model.h5" -o "$out/$stage.emb.h5" --force
  deephash evaluate "$out/$stage.emb.h5" "${metrics[@]}"
done

# 48-bit codes: triplet-ranking over all triplets of 10x10 P×K batches (the hashing comparison's setting).
hash=(--objective hash --method triplet-ranking --bits 48 --miner all --classes-per-batch 10 --samples-per-class 10)
deephash finetune "${common[@]}" "${model[@]}" "${hash[@]}" --epochs "$hash_epochs" \
  --lr 1e-3 --lr-backbone 1e-4 -o "$out/ft-hash48.model.h5" --resume
deephash finetune "${common[@]}" --init "$out/ft-hash48.model.h5" "${hash[@]}" --epochs 2 \
  --lr 1e-4 --lr-backbone 1e-5 -o "$out/ft-hash48-lr.model.h5" --resume
for stage in ft-hash48 ft-hash48-lr; do
  deephash extract "${common[@]}" --model "$out/$stage.model.h5" -o "$out/$stage.codes.h5" --force
  deephash evaluate "$out/$stage.codes.h5" "${metrics[@]}"
  deephash evaluate "$out/$stage.codes.h5" --protocol pooled "${metrics[@]}"
done

# 48-bit codes on the fine-tuned embedding's backbone: --init keeps it, the hash head is new (other shape).
deephash finetune "${common[@]}" --init "$out/ft-facenet-lr.model.h5" "${hash[@]}" --epochs 2 \
  --lr 1e-3 --lr-backbone 1e-5 -o "$out/ft-hash48-on-facenet.model.h5" --resume
deephash extract "${common[@]}" --model "$out/ft-hash48-on-facenet.model.h5" -o "$out/ft-hash48-on-facenet.codes.h5" \
  --force
deephash evaluate "$out/ft-hash48-on-facenet.codes.h5" "${metrics[@]}"
