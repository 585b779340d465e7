"""Terminal output: everything human goes to stderr so stdout stays a clean pipe of paths or JSON."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
