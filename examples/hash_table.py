"""Summarise examples/hashing.sh: markdown table of mAP by bits x method, and mAP-vs-bits PNG.

Usage: python examples/hash_table.py OUT_DIR [FLOAT_EVAL_JSON]
FLOAT_EVAL_JSON: the `evaluate --json` of the float embedding to compare against (mAP and size).
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from deephash_cli.artifacts import read_artifact
from deephash_cli.plots import line_plot, save_figure

out = Path(sys.argv[1])
results = defaultdict(dict)
for path in sorted(out.glob("hash-*.eval.json")):
    variant, bits = path.name.removeprefix("hash-").removesuffix(".eval.json").rsplit("-", 1)
    evaluation = json.loads(path.read_text())
    model = read_artifact(out / f"hash-{variant}-{bits}.model.h5")
    evaluation["seconds_per_epoch"] = model.config["seconds_per_epoch"]
    evaluation["best_val_map"] = model.config["best_val_map"]
    results[variant][int(bits)] = evaluation
bit_list = sorted({b for v in results.values() for b in v})
print("tie-aware mAP@all, test queries against the train database (50,000):\n")
print("| method | " + " | ".join(f"{b} bits ({(b + 7) // 8} B)" for b in bit_list) + " |")
print("|---|" + "---:|" * len(bit_list))
for variant in sorted(results):
    print(f"| {variant} | " + " | ".join(f"{results[variant][b]['map']:.4f}" if b in results[variant] else "–"
                                         for b in bit_list) + " |")
print("\nprecision@100:\n")
print("| method | " + " | ".join(f"{b} bits" for b in bit_list) + " |")
print("|---|" + "---:|" * len(bit_list))
for variant in sorted(results):
    print(f"| {variant} | " + " | ".join(f"{results[variant][b]['precision_at']['100']:.4f}"
                                         if b in results[variant] else "–" for b in bit_list) + " |")
print("\nties: mAP expected (optimistic / pessimistic) per method at 12 and 48 bits:\n")
for variant in sorted(results):
    for b in (12, 48):
        if b in results[variant]:
            r = results[variant][b]
            print(f"- {variant} {b} bits: {r['map_expected']:.4f} ({r['map_optimistic']:.4f} / "
                  f"{r['map_pessimistic']:.4f})")
if len(sys.argv) > 2:
    ref = json.loads(Path(sys.argv[2]).read_text())
    print(f"\nfloat reference {ref['file']}: mAP {ref['map']:.4f}")
series = {v: (sorted(results[v]), [results[v][b]["map"] for b in sorted(results[v])]) for v in sorted(results)}
save_figure(line_plot(series, xlabel="bits", ylabel="test mAP@all (tie-aware)",
                      title="Hash codes on CIFAR-10 MobileNetV2@112 features"), out / "map_vs_bits.png", force=True)
print(f"\n{out / 'map_vs_bits.png'}")
