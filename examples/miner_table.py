"""Summarise examples/compare_miners.sh: markdown table + validation mAP against wall time (PNG).

Reads OUT/miner-<name>.h5 (training history inside) and OUT/miner-<name>.eval.json (test metrics).
Usage: python examples/miner_table.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np

from deephash_cli.artifacts import read_artifact
from deephash_cli.plots import line_plot, save_figure

out = Path(sys.argv[1])
rows, series = [], {}
for path in sorted(out.glob("miner-*.h5")):
    name = path.stem.removeprefix("miner-")
    history = read_artifact(path, splits=[]).history
    test = json.loads((out / f"miner-{name}.eval.json").read_text())
    wall = np.cumsum([h["seconds_with_validation"] for h in history])
    val = np.array([h["val_map"] for h in history])
    first_95 = int(np.argmax(val >= 0.95 * val.max()))
    series[name] = (wall.tolist(), val.tolist())
    rows.append((name, test["map"], test["knn_accuracy"], test["precision_at"]["100"], val.max(),
                 np.mean([h["seconds"] for h in history]), wall[first_95], first_95 + 1,
                 [h["active_fraction"] for h in history]))
print("| triplets | test mAP@all | kNN acc (k=10) | P@100 | best val mAP | s/epoch | wall s to 95% of best val "
      "(epoch) | active fraction: epoch 1 → last |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for name, m, knn, p100, best, spe, t95, e95, active in sorted(rows, key=lambda r: -r[1]):
    print(f"| {name} | {m:.4f} | {knn:.4f} | {p100:.4f} | {best:.4f} | {spe:.2f} | {t95:.1f} ({e95}) | "
          f"{active[0]:.3f} → {active[-1]:.3f} |")
figure = line_plot(series, xlabel="wall time (s, training + validation)", ylabel="validation mAP",
                   title="Miner convergence: FaceNet loss, validation mAP against wall time")
save_figure(figure, out / "miners_convergence.png", force=True)
print(f"\n{out / 'miners_convergence.png'}")
