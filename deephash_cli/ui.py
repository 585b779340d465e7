"""Terminal output: everything human goes to stderr so stdout stays a clean pipe of paths or JSON."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def stderr_console() -> Console:
    """A console on the current sys.stderr (looked up at call time, so test runners can capture it)."""
    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """One warning line on stderr."""
    stderr_console().print(f"[yellow]warning:[/yellow] {message}", markup=True, soft_wrap=True)  # one line, unwrapped


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "images") -> Iterator[Progress]:
    """A rich progress bar on stderr with throughput (``unit``/s) and any extra fields (loss, val mAP)."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr_console(), transient=False) as progress:
        progress.add_task(description, total=total, rate="", info="")
        yield progress


def advance(progress: Progress, n: int, unit: str = "img", **fields: str) -> None:
    """Advance the single task of ``progress`` by ``n`` and refresh its rate and info fields."""
    task_id = progress.task_ids[0]
    progress.update(task_id, advance=n, **fields)
    speed = progress.tasks[0].speed
    if speed:
        progress.update(task_id, rate=f"{speed:,.0f} {unit}/s")


def evaluation_table(result: Mapping[str, Any], metrics: Sequence[str] | None = None) -> Table:
    """A rich table of one ``evaluate`` result showing the ``metrics`` asked for (names as ``--metric`` takes
    them: map, map@K, precision@K, knn, recall@K, map@r, nmi; default the result's ``metrics`` list, else all of
    them), then the query and database sizes."""
    if metrics is None:
        metrics = result.get("metrics") or ["map", *(f"map@{k}" for k in result.get("map_at", {})),
                                            *(f"precision@{k}" for k in result.get("precision_at", {})), "knn"]
    table = Table(title=f"{result['file']} ({result['kind']}, {result['distance']})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in metrics:
        metric, _, k = name.partition("@")
        if name == "map":
            table.add_row(f"mAP@all ({result['ties']})", f"{result['map']:.4f}")
            if result["distance"] == "hamming":
                table.add_row("mAP@all optimistic / pessimistic",
                              f"{result['map_optimistic']:.4f} / {result['map_pessimistic']:.4f}")
        elif metric == "map" and k != "r":
            table.add_row(f"mAP@{k}", f"{result['map_at'][k]:.4f}")
        elif metric == "precision":
            table.add_row(f"precision@{k}", f"{result['precision_at'][k]:.4f}")
        elif name == "knn":
            table.add_row(f"kNN accuracy (k={result['knn_k']})", f"{result['knn_accuracy']:.4f}")
        elif metric == "recall":
            table.add_row(f"Recall@{k}", f"{result['recall_at'][k]:.4f}")
        elif name == "map@r":
            table.add_row("MAP@R", f"{result['map_at_r']:.4f}")
        elif name == "nmi":
            table.add_row(f"NMI (k-means, {result['nmi_clusters']} clusters)", f"{result['nmi']:.4f}")
    table.add_row("queries / database", f"{result['queries']} / {result['database']}")
    if result.get("queries_without_relevant"):
        table.add_row("queries without relevant item", str(result["queries_without_relevant"]))
    table.caption = result.get("selection", "")
    return table
