"""`deephash report`: one markdown summary of a folder of artifacts and their recorded evaluations.

Nothing is recomputed: figures come from the artifacts' attributes (config, extraction, history)
and from the ``.evals.json`` sidecars written by ``evaluate --record``. Next to the markdown file
(``<stem>`` = its name without ``.md``) go, when there is something to draw:

- ``<stem>.map-vs-bits.png``: best recorded mAP of codes artifacts against code length, one line per
  hash method;
- ``<stem>.miner-convergence.png``: validation mAP against cumulative training seconds from the
  history of embeddings artifacts trained with a miner, one line per miner;
- ``<stem>.tsne-grid.png``: a montage of the folder's ``*tsne*.png`` files.

Unreadable artifacts (whatever the error) and malformed entries of ``.evals.json`` sidecars are listed
under "Skipped" with the reason and the rest is still summarised.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from deephash_cli import artifacts, records
from deephash_cli.errors import DeephashError
from deephash_cli.info import bits_of, key_config, method_of, seconds_of

PATTERNS = ("*.h5", "*.hdf5")
DASH = "—"


def find_artifacts(folder: Path, recursive: bool) -> list[Path]:
    """HDF5 files (``*.h5``, ``*.hdf5``) in ``folder`` (and its subfolders with ``recursive``), sorted."""
    found = set()
    for pattern in PATTERNS:
        found |= set(folder.rglob(pattern) if recursive else folder.glob(pattern))
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def plot_paths(output: Path) -> dict[str, Path]:
    """Where the report's figures go: next to the markdown file, named after it."""
    stem = output.name[:-3] if output.name.endswith(".md") else output.name
    return {name: output.with_name(f"{stem}.{name}.png") for name in ("map-vs-bits", "miner-convergence",
                                                                         "tsne-grid")}


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any, digits: int = 4) -> str:
    return DASH if value is None else f"{float(value):.{digits}f}"


def _reason(err: Exception, path: Path) -> str:
    """A skipped file's reason: a DeephashError's message without the path, else the exception's type and text."""
    if isinstance(err, DeephashError):
        return str(err).removeprefix(f"{path}: ").removeprefix(f"{path}:")
    return f"unreadable ({type(err).__name__}: {err})"


def collect(folder: Path, recursive: bool) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Read every artifact's summary and recorded evaluations; returns (entries, skipped (file, reason)).

    Whatever goes wrong with one file (a DeephashError, or h5py's OSError/KeyError/RuntimeError on a
    damaged HDF5 file) skips that file with the reason; malformed entries of a ``.evals.json`` sidecar
    are skipped one by one (``records.check_record``), the file's other records are still reported.
    """
    entries, skipped = [], []
    for path in find_artifacts(folder, recursive):
        name = str(path.relative_to(folder))
        try:
            summary = artifacts.read_summary(path)
            entry = {"name": name, "path": path, "summary": summary, "evaluations": []}
            table_rows([entry])  # a header the table cannot show is this file's problem, not the report's
            convergence_series([entry])
        except Exception as err:  # noqa: BLE001 - one bad file must not abort the report
            skipped.append((name, _reason(err, path)))
            continue
        sidecar = records.sidecar_path(path)
        sidecar_name = str(sidecar.relative_to(folder))
        try:
            evaluations, bad = records.read_records_checked(path)
            skipped += [(sidecar_name, f"entry {position} skipped: {reason}") for position, reason in bad]
            sha256 = artifacts.sha256_file(path) if evaluations else None
        except Exception as err:  # noqa: BLE001 - an unreadable sidecar loses its records, not the artifact
            skipped.append((sidecar_name, _reason(err, sidecar)))
            evaluations, sha256 = [], None
        for evaluation in evaluations:
            evaluation["current"] = evaluation.get("artifact_sha256") == sha256
        entries.append({**entry, "evaluations": evaluations})
    return entries, skipped


def table_rows(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (artifact, recorded evaluation); artifacts without records get one row without metrics."""
    rows = []
    for entry in entries:
        header, splits = entry["summary"]["header"], entry["summary"]["splits"]
        config = header["config"]
        keys = key_config(header, splits)
        seconds = seconds_of(header)
        base = {"file": entry["name"], "kind": header["kind"], "dataset": keys.get("dataset"),
                "backbone": keys.get("backbone"), "stage": config.get("stage"), "method": method_of(config),
                "bits": bits_of(config, splits),
                "seconds": None if seconds is None else f"{seconds['seconds']:.2f} s/{seconds['per']}"
                if seconds["per"] == "epoch" else f"{seconds['seconds']:.2f} s extract",
                "command": header.get("command")}
        if not entry["evaluations"]:
            rows.append({**base, "map": None, "knn": None, "p100": None, "evaluation": None, "current": True,
                         "eval_command": None})
        for record in entry["evaluations"]:
            setting = record["setting"]
            rows.append({**base, "map": record.get("map"), "knn": record.get("knn_accuracy"),
                         "p100": (record.get("precision_at") or {}).get("100"),
                         "evaluation": f"{setting.get('protocol')}/{setting.get('distance')}",
                         "selection": record.get("selection"), "current": record["current"],
                         "eval_command": record.get("command")})
    return rows


def markdown(folder: Path, rows: Sequence[Mapping[str, Any]], skipped: Sequence[tuple[str, str]],
             figures: Mapping[str, Path]) -> str:
    """The report: results table, commands behind every row, figures and the skipped list."""
    lines = [f"# deephash report: {folder}", "",
             f"{len({r['file'] for r in rows})} artifacts, {sum(r['map'] is not None for r in rows)} recorded "
             f"evaluations. Metrics are as recorded by `deephash evaluate --record` (nothing recomputed); "
             f"seconds are training seconds per epoch or extraction seconds. `#` refers to the commands below.", "",
             "| # | dataset | backbone | stage | method | bits | mAP | kNN | P@100 | evaluation | seconds | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    stale = False
    for number, row in enumerate(rows, 1):
        mark = "" if row["current"] else " †"
        stale |= not row["current"]
        cells = [str(number), row["dataset"] or DASH, row["backbone"] or DASH, row["stage"] or row["kind"],
                 row["method"] or DASH, row["bits"] or DASH, _number(row["map"]) + mark, _number(row["knn"]),
                 _number(row["p100"]), row["evaluation"] or DASH, row["seconds"] or DASH, f"`{row['file']}`"]
        lines.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
    if stale:
        lines += ["", "† recorded for another version of the file (its SHA-256 changed since); re-run "
                      "`deephash evaluate --record`."]
    lines += ["", "## Commands", ""]
    for number, row in enumerate(rows, 1):
        lines.append(f"{number}. `{row['file']}` made by `{row['command'] or 'unknown'}`")
        if row["eval_command"]:
            lines.append(f"   - evaluated by `{row['eval_command']}` ({row.get('selection') or ''})")
    titles = {"map-vs-bits": "mAP against code length", "miner-convergence": "Miner convergence",
              "tsne-grid": "t-SNE plots"}
    if figures:
        lines += ["", "## Figures", ""]
        for name, path in figures.items():
            lines += [f"### {titles[name]}", "", f"![{titles[name]}]({path.name})", ""]
    if skipped:
        lines += ([""] if lines[-1] else []) + ["## Skipped", ""]
        lines += [f"- `{name}`: {_escape(reason)}" for name, reason in skipped]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- figures


def map_vs_bits_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Per hash method (qualified by dataset/backbone/training/protocol when several occur): bits -> best recorded
    mAP.

    Codes from ``encode`` come from a head on frozen features, codes from ``extract --model`` from a fine-tuned
    network: different series. Several artifacts of one series at one length (e.g. two stages of a run) give
    their best value; a mean would describe no model.
    """
    points = [{**r, "training": "fine-tuned" if r["stage"] == "extract" else "head"}
              for r in rows if r["kind"] == "codes" and r["map"] is not None and r["bits"] and r["current"]]
    qualifiers = [key for key in ("dataset", "backbone", "training", "evaluation")
                  if len({r[key] for r in points}) > 1]
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in points:
        label = (row["method"] or "unknown").split(" + ")[0]
        if qualifiers:
            label += " (" + ", ".join(str(row[key]) for key in qualifiers) + ")"
        grouped[label][int(row["bits"])].append(float(row["map"]))
    return {label: (sorted(by_bits), [max(by_bits[b]) for b in sorted(by_bits)])
            for label, by_bits in sorted(grouped.items())}


def convergence_series(entries: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Per miner: cumulative training seconds -> validation mAP, from embeddings artifacts' history."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in entries:
        header, history = entry["summary"]["header"], entry["summary"]["history"]
        miner = header["config"].get("miner")
        if header["kind"] != "embeddings" or not miner or not history:
            continue
        elapsed, x, y = 0.0, [], []
        for row in history:
            if row.get("seconds") is None or row.get("val_map") is None:
                continue
            elapsed += float(row["seconds"])
            x.append(elapsed)
            y.append(float(row["val_map"]))
        label = str(miner) if miner not in series else f"{miner} ({entry['name']})"
        if x:
            series[label] = (x, y)
    return series


def tsne_images(folder: Path, recursive: bool, exclude: Path) -> list[Path]:
    """The folder's ``*tsne*.png`` files, except the report's own montage."""
    found = folder.rglob("*tsne*.png") if recursive else folder.glob("*tsne*.png")
    return sorted(p for p in found if p.resolve() != exclude.resolve() and not p.name.startswith("."))


def tsne_grid(images: Sequence[Path], folder: Path):
    """A montage of PNG files (matplotlib imshow), titled by file name. Returns the figure."""
    from deephash_cli.plots import plt

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path in zip(axes.flat, images):
        ax.imshow(plt.imread(str(path)))
        ax.set_title(str(path.relative_to(folder)), fontsize=8)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- entry point


def build_report(folder: Path, output: Path, *, recursive: bool = False, force: bool = False) -> dict[str, Any]:
    """Write the markdown report of ``folder`` to ``output`` and its figures next to it.

    Returns ``{"report", "figures", "artifacts", "rows", "skipped"}``. A folder without readable
    artifacts is an error; unreadable ones among readable ones are skipped and listed.
    """
    from deephash_cli.plots import line_plot, save_figure

    folder = Path(folder)
    if not folder.is_dir():
        raise DeephashError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    if str(output) == "-":
        raise DeephashError("report writes a markdown file with figures next to it; -o - is not supported")
    artifacts.check_output(output, force)
    entries, skipped = collect(folder, recursive)
    if not entries:
        hint = "" if recursive else " (--recursive searches subfolders)"
        if skipped:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
            raise DeephashError(f"{folder}: no readable deephash artifacts ({len(skipped)} skipped: {reasons})")
        raise DeephashError(f"{folder}: no deephash artifacts ({', '.join(PATTERNS)}) found{hint}")
    rows = table_rows(entries)
    targets = plot_paths(output)
    drawings: dict[str, Any] = {}
    bits_series = map_vs_bits_series(rows)
    if bits_series:
        drawings["map-vs-bits"] = lambda: line_plot(bits_series, xlabel="bits", ylabel="mAP (recorded)",
                                                    title="mAP against code length")
    miner_series = convergence_series(entries)
    if miner_series:
        drawings["miner-convergence"] = lambda: line_plot(miner_series, xlabel="cumulative training seconds",
                                                          ylabel="validation mAP", title="Miner convergence")
    images = tsne_images(folder, recursive, targets["tsne-grid"])
    if images:
        drawings["tsne-grid"] = lambda: tsne_grid(images, folder)
    for name in drawings:
        artifacts.check_output(targets[name], force)
    figures = {}
    for name, draw in drawings.items():
        figures[name] = save_figure(draw(), targets[name], force=force)
    records.write_text_atomic(output, markdown(folder, rows, skipped, figures), force=force)
    return {"report": str(output), "figures": {k: str(v) for k, v in figures.items()}, "artifacts": len(entries),
            "rows": len(rows), "skipped": [{"file": name, "reason": reason} for name, reason in skipped]}
