"""Human-readable summaries of evaluation results (rich tables, markdown)."""

from __future__ import annotations

from typing import Any, Mapping

from rich.table import Table


def evaluation_table(result: Mapping[str, Any]) -> Table:
    """A rich table of one evaluation result (the dict `stages.run_evaluate` returns)."""
    table = Table(title=f"{result['file']} ({result['kind']}, {result['distance']})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"mAP@all ({result['ties']})", f"{result['map']:.4f}")
    if result["distance"] == "hamming":
        table.add_row("mAP@all optimistic / pessimistic",
                      f"{result['map_optimistic']:.4f} / {result['map_pessimistic']:.4f}")
    for k, value in result.get("map_at", {}).items():
        table.add_row(f"mAP@{k}", f"{value:.4f}")
    for k, value in result.get("precision_at", {}).items():
        table.add_row(f"precision@{k}", f"{value:.4f}")
    table.add_row(f"kNN accuracy (k={result['knn_k']})", f"{result['knn_accuracy']:.4f}")
    table.add_row("queries / database", f"{result['queries']} / {result['database']}")
    if result.get("queries_without_relevant"):
        table.add_row("queries without relevant item", str(result["queries_without_relevant"]))
    table.caption = result.get("selection", "")
    return table
