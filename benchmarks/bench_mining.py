"""Batch-hard and semi-hard FaceNet triplet loss: deephash vs pytorch-metric-learning.

Run: ``python benchmarks/bench_mining.py`` (needs the ``bench`` extra:
``pip install pytorch-metric-learning``; the package itself never imports it).

Like-for-like definitions (checked, not assumed: the script fails if values differ
by more than 1e-5):

* Distance: squared Euclidean between L2-normalised embeddings. Ours:
  ``FaceNetTripletLoss`` / miners with their defaults (``normalize=True, squared=True``).
  PML: ``LpDistance(power=2)`` (``normalize_embeddings=True`` is its default) for both
  the miner and the loss. (PML's default is the non-squared distance.)
* Reduction: PML's ``TripletMarginLoss`` averages over triplets with positive loss
  (``AvgNonZeroReducer``); ours is called with ``reduction="positive_mean"``.
* Batch-hard: ``HardestMiner`` vs ``BatchHardMiner``: same definition.
* Semi-hard: ``SemiHardMiner(select="all")`` vs
  ``TripletMarginMiner(margin, type_of_triplets="semihard")``: every negative with
  ``d_ap < d_an < d_ap + margin`` (PML: ``<=`` at the top, a zero-loss boundary).
  Our default ``select="nearest"`` (one negative per pair) is a different definition;
  it is timed in an extra row without a value check.

Inputs: ``B`` in (256, 512, 1024), ``d = 128``, ``B / 8`` classes of 8 items each
(a P x K batch), margin 0.2, float32 on the CPU, identical tensors for both libraries.
One iteration = mine + loss forward + backward into the embeddings.

Timing: the machine may be shared, so the two libraries are measured in alternating
rounds (``ROUNDS`` windows of ``WINDOW`` seconds each) and each keeps its best round:
interference from other processes only ever slows a round down.

Triplet counts of the semi-hard "all" rows may differ by a few triplets whose
``d_an - d_ap`` lies within float rounding of the margin (PML tests ``an - ap <= m``,
we test ``an < ap + m``): those have ~0 loss, so the values still agree.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from deephash_cli.losses import FaceNetTripletLoss
from deephash_cli.miners import HardestMiner, SemiHardMiner

try:
    from pytorch_metric_learning import distances as pml_distances
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners
except ImportError:  # pragma: no cover - benchmark-only dependency
    sys.exit("benchmarks/bench_mining.py needs pytorch-metric-learning (pip install pytorch-metric-learning)")

MARGIN = 0.2
DIM = 128
SIZES = (256, 512, 1024)
ROUNDS = 3
WINDOW = 0.6
TOLERANCE = 1e-5
COUNT_TOLERANCE = 1e-5  # relative: boundary triplets, see the module docstring


def ours(miner):
    loss = FaceNetTripletLoss(margin=MARGIN)
    reduction = "positive_mean"  # like PML's AvgNonZeroReducer, for every miner here

    def step(emb, labels):
        triplets = miner(emb, labels, MARGIN)
        return loss(emb, labels, triplets, reduction=reduction), triplets[0].numel()

    return step


def pml(miner):
    loss = pml_losses.TripletMarginLoss(margin=MARGIN, distance=pml_distances.LpDistance(power=2))

    def step(emb, labels):
        triplets = miner(emb, labels)
        return loss(emb, labels, triplets), triplets[0].numel()

    return step


def best_throughputs(steps, emb, labels) -> list[float]:
    """Best-round iterations/s of each step (mine + forward + backward), rounds interleaved."""
    xs = [emb.clone().requires_grad_(True) for _ in steps]
    for step, x in zip(steps, xs):  # warm-up
        step(x, labels)[0].backward()
    best = [0.0] * len(steps)
    for _ in range(ROUNDS):
        for i, (step, x) in enumerate(zip(steps, xs)):
            iters, start = 0, time.perf_counter()
            while iters < 1 or time.perf_counter() - start < WINDOW:
                x.grad = None
                step(x, labels)[0].backward()
                iters += 1
            best[i] = max(best[i], iters / (time.perf_counter() - start))
    return best


def value(step, emb, labels) -> tuple[float, int]:
    loss, count = step(emb.clone().requires_grad_(True), labels)
    return float(loss.detach()), count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine, 2 threads "
        "oversubscribe and make timings erratic)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pml_dist = pml_distances.LpDistance(power=2)
    cases = [
        ("batch-hard", ours(HardestMiner()), pml(pml_miners.BatchHardMiner(distance=pml_dist)), True),
        (
            "semi-hard (all)",
            ours(SemiHardMiner(select="all")),
            pml(pml_miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard", distance=pml_dist)),
            True,
        ),
        (
            "semi-hard (nearest, ours) vs PML semihard",
            ours(SemiHardMiner(select="nearest")),
            pml(pml_miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard", distance=pml_dist)),
            False,
        ),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={DIM}, margin={MARGIN}, CPU float32\n")
    print("| miner | B | ours it/s | PML it/s | ratio | ours loss | PML loss | |diff| | triplets ours / PML |")
    print("|---|---|---|---|---|---|---|---|---|")
    failures = []
    for b in SIZES:
        g = torch.Generator().manual_seed(b)
        emb = torch.randn(b, DIM, generator=g)
        labels = (torch.arange(b) // 8)[torch.randperm(b, generator=g)]
        for name, ours_step, pml_step, comparable in cases:
            ours_val, ours_n = value(ours_step, emb, labels)
            pml_val, pml_n = value(pml_step, emb, labels)
            diff = abs(ours_val - pml_val)
            if comparable and (diff > TOLERANCE or abs(ours_n - pml_n) > COUNT_TOLERANCE * max(pml_n, 1)):
                failures.append(f"{name} B={b}: ours {ours_val} ({ours_n}) vs PML {pml_val} ({pml_n})")
            ours_ips, pml_ips = best_throughputs([ours_step, pml_step], emb, labels)
            print(
                f"| {name} | {b} | {ours_ips:.1f} | {pml_ips:.1f} | {ours_ips / pml_ips:.2f}x | "
                f"{ours_val:.6f} | {pml_val:.6f} | {diff:.1e}{'' if comparable else ' (n/a)'} | {ours_n} / {pml_n} |"
            )
    if failures:
        print("\nVALUE MISMATCH:\n" + "\n".join(failures))
        return 1
    print(f"\nAll comparable rows agree within {TOLERANCE:g} (triplet counts within {COUNT_TOLERANCE:g} relative).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
