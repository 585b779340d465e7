"""`deephash report`: one markdown summary of a folder of artifacts and their recorded evaluations.

Nothing is recomputed: figures come from the artifacts' attributes (config, extraction, history)
and from the ``.evals.json`` sidecars written by ``evaluate --record``. Next to the markdown file
(``<stem>`` = its name without ``.md``) go, when there is something to draw:

- ``<stem>.map-vs-bits.png``: recorded mAP of codes artifacts against code length, one line per
  hash method;
- ``<stem>.miner-convergence.png``: validation mAP against cumulative training seconds from the
  history of embeddings artifacts trained with a miner, one line per miner;
- ``<stem>.tsne-grid.png``: a montage of the folder's ``*tsne*.png`` files.

Recall@1, MAP@R and NMI get columns when some evaluation recorded them (`evaluate --metric recall@1,map@r,nmi`).

Artifacts that differ only in their seed (``groups``: same config once the run's seed, its own
files and its outcomes are left out; same kind and evaluation setting) are one row: mean ± sample
standard deviation (ddof = 1) of every metric, n in the seed column; a group of one shows its plain
values. The figures plot group means with ± std error bars. Nothing is chosen on test numbers: where
several experiments fall on one point of the mAP-vs-bits figure, the one with the best mean
validation mAP (recorded by its training) is drawn.

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
from deephash_cli.groups import Summary, group, group_key, seed_of, summarize
from deephash_cli.info import bits_of, key_config, method_of, seconds_of

PATTERNS = ("*.h5", "*.hdf5")
DASH = "—"
METRICS = ("map", "map_pess", "map_opt", "knn", "p100", "r1", "map_r", "nmi", "seconds")
# The metric-learning columns (evaluate --metric recall@1,map@r,nmi): shown when some row recorded them.
DML_COLUMNS = (("r1", "R@1"), ("map_r", "MAP@R"), ("nmi", "NMI"))


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


def validation_of(config: Mapping[str, Any]) -> float | None:
    """The validation mAP that selected the model behind an artifact (its training's, else its model's)."""
    if config.get("stage") in ("train-triplet", "train-hash", "finetune"):
        value = config.get("best_val_map")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    model_config = config.get("model_config")
    return validation_of(model_config) if isinstance(model_config, Mapping) else None


def table_rows(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (artifact, recorded evaluation); artifacts without records get one row without metrics.

    ``key`` is the row's seed group (``groups.group_key`` of its config, kind and evaluation setting)."""
    rows = []
    for entry in entries:
        header, splits = entry["summary"]["header"], entry["summary"]["splits"]
        config = header["config"]
        keys = key_config(header, splits)
        seconds = seconds_of(header)
        threads = (header.get("versions") or {}).get("torch_threads")
        base = {"file": entry["name"], "kind": header["kind"], "dataset": keys.get("dataset"),
                "backbone": keys.get("backbone"), "stage": config.get("stage"), "method": method_of(config),
                "bits": bits_of(config, splits), "seed": seed_of(config), "val_map": validation_of(config),
                "threads": None if threads is None else str(threads),
                "seconds": None if seconds is None else float(seconds["seconds"]),
                "seconds_unit": None if seconds is None else "s/epoch" if seconds["per"] == "epoch" else "s extract",
                "command": header.get("command")}
        if not entry["evaluations"]:
            rows.append({**base, **{name: None for name in METRICS if name != "seconds"},
                         "evaluation": None, "current": True,
                         "eval_command": None, "key": group_key(config, header["kind"], None)})
        for record in entry["evaluations"]:
            setting = record["setting"]
            rows.append({**base, "map": record.get("map"), "map_pess": record.get("map_pessimistic"),
                         "map_opt": record.get("map_optimistic"), "knn": record.get("knn_accuracy"),
                         "p100": (record.get("precision_at") or {}).get("100"),
                         "r1": (record.get("recall_at") or {}).get("1"), "map_r": record.get("map_at_r"),
                         "nmi": record.get("nmi"),
                         "evaluation": f"{setting.get('protocol')}/{setting.get('distance')}",
                         "selection": record.get("selection"), "current": record["current"],
                         "eval_command": record.get("command"),
                         "key": group_key(config, header["kind"], setting, record["current"])})
    return rows


def group_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only in their seed as one: the shared cells of the first member, ``members`` (by file),
    ``n``, ``seeds`` and a ``groups.Summary`` (or None) per metric in ``METRICS`` and for ``val_map``."""
    grouped = []
    for members in group(rows, key=lambda row: row["key"], order=lambda row: (row["file"], row["evaluation"] or "")):
        first = members[0]
        summaries = {name: summarize([float(m[name]) for m in members if m.get(name) is not None])
                     for name in (*METRICS, "val_map")}
        grouped.append({**{key: first[key] for key in ("kind", "dataset", "backbone", "stage", "method", "bits",
                                                        "evaluation", "current", "seconds_unit")},
                        "members": list(members), "n": len(members), "seeds": [m["seed"] for m in members],
                        "threads": sorted({m["threads"] for m in members if m["threads"] is not None}, key=int),
                        **summaries})
    return grouped


def _statistic(summary: Summary | None, n: int, digits: int = 4, unit: str = "") -> str:
    """'0.7168' for one value, '0.7168 ± 0.0032' for several (with '(n=k)' when fewer than the group's n)."""
    if summary is None:
        return DASH
    text = f"{summary.mean:.{digits}f}"
    if summary.std is not None:
        text += f" ± {summary.std:.{digits}f}"
    text += f" {unit}" if unit else ""
    return text + (f" (n={summary.n})" if 1 < n != summary.n else "")


def _bounds(row: Mapping[str, Any]) -> str:
    """'0.6928–0.7396': the pessimistic and optimistic mAP (relevant items last / first inside every tie), means
    over the group; a dash for float distances without ties worth showing (equal to 4 decimals) or no record."""
    low, high = row.get("map_pess"), row.get("map_opt")
    if low is None or high is None or f"{low.mean:.4f}" == f"{high.mean:.4f}":
        return DASH
    return f"{low.mean:.4f}–{high.mean:.4f}"


def _seed_cell(row: Mapping[str, Any]) -> str:
    seeds = row["seeds"]
    if row["n"] == 1:
        return DASH if seeds[0] is None else str(seeds[0])
    shown = ", ".join(DASH if seed is None else str(seed) for seed in seeds)
    repeated = len(set(seeds)) < len(seeds)
    return f"n={row['n']}: {shown}" + (" ‡" if repeated else "")


def markdown(folder: Path, rows: Sequence[Mapping[str, Any]], skipped: Sequence[tuple[str, str]],
             figures: Mapping[str, Path]) -> str:
    """The report: results table (one row per seed group), commands behind every row, figures, skipped list."""
    files = {member["file"] for row in rows for member in row["members"]}
    dml = [(name, title) for name, title in DML_COLUMNS if any(row.get(name) is not None for row in rows)]
    evaluations = sum(member["map"] is not None for row in rows for member in row["members"])
    lines = [f"# deephash report: {folder}", "",
             f"{len(files)} artifacts, {evaluations} recorded evaluations. Metrics are as recorded by `deephash "
             f"evaluate --record` (nothing recomputed); seconds are training seconds per epoch or extraction "
             f"seconds. Artifacts that differ only in their seed are one row: mean ± sample standard deviation "
             f"(ddof = 1) over the n runs listed under seed. mAP bounds: the tie-aware mAP's pessimistic–optimistic "
             f"range (relevant items last / first inside each group of equal distances). threads: torch's intra-op threads in the run that "
             f"wrote the file (rerun with OMP_NUM_THREADS set to it). `#` refers to the commands below.", "",
             "| # | dataset | backbone | stage | method | bits | seed | mAP | mAP bounds | kNN | P@100 | "
             + "".join(f"{title} | " for _, title in dml) + "evaluation | threads | seconds | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(dml) + "---|---|---|---|"]
    stale = repeated = False
    for number, row in enumerate(rows, 1):
        mark = "" if row["current"] else " †"
        stale |= not row["current"]
        seed = _seed_cell(row)
        repeated |= seed.endswith("‡")
        cells = [str(number), row["dataset"] or DASH, row["backbone"] or DASH, row["stage"] or row["kind"],
                 row["method"] or DASH, row["bits"] or DASH, seed, _statistic(row["map"], row["n"]) + mark,
                 _bounds(row),
                 _statistic(row["knn"], row["n"]), _statistic(row["p100"], row["n"]),
                 *(_statistic(row[name], row["n"]) for name, _ in dml), row["evaluation"] or DASH,
                 ",".join(row["threads"]) or DASH,
                 _statistic(row["seconds"], row["n"], digits=2, unit=row["seconds_unit"] or ""),
                 ", ".join(f"`{member['file']}`" for member in row["members"])]
        lines.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
    if stale:
        lines += ["", "† recorded for another version of the file (its SHA-256 changed since); re-run "
                      "`deephash evaluate --record`."]
    if repeated:
        lines += ["", "‡ a seed occurs more than once in the group (the same run made twice, e.g. a copy or a "
                      "rerun): it counts once per artifact."]
    lines += ["", "## Commands", ""]
    for number, row in enumerate(rows, 1):
        indent = " " * len(f"{number}. ")
        if row["n"] > 1:
            seeds = ", ".join(DASH if seed is None else str(seed) for seed in row["seeds"])
            lines.append(f"{number}. {row['n']} runs, seeds {seeds}:")
        for member in row["members"]:
            lead, inner = (f"{number}. ", indent) if row["n"] == 1 else (f"{indent}- ", indent + "  ")
            lines.append(f"{lead}`{member['file']}` made by `{member['command'] or 'unknown'}`")
            if member["eval_command"]:
                lines.append(f"{inner}- evaluated by `{member['eval_command']}` ({member.get('selection') or ''})")
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

Series = dict[str, tuple[list[float], list[float], list[float]]]  # label -> (x, y, ± error; nan: none)


def _error(summary: Summary) -> float:
    return math.nan if summary.std is None else summary.std


def _label_n(label: str, ns: Sequence[int]) -> str:
    """A series label with the number of runs per point when several seeds were averaged."""
    if max(ns) == 1:
        return label
    return f"{label} (n={min(ns)})" if min(ns) == max(ns) else f"{label} (n={min(ns)}–{max(ns)})"


def map_vs_bits_series(rows: Sequence[Mapping[str, Any]]) -> Series:
    """Per hash method (qualified by dataset/backbone/training/protocol when several occur): bits -> mean recorded
    mAP of a seed group, ± its standard deviation.

    Codes from ``encode`` come from a head on frozen features, codes from ``extract --model`` from a fine-tuned
    network: different series. Several experiments of one series at one length (e.g. two learning rates) are
    not averaged (a mean would describe no model) and not chosen by their test mAP: the one with the best
    mean validation mAP is drawn (experiments without a validation score come after, then by file name).
    """
    points = [{**r, "training": "fine-tuned" if r["stage"] == "extract" else "head"}
              for r in rows if r["kind"] == "codes" and r["map"] is not None and r["bits"] and r["current"]]
    qualifiers = [key for key in ("dataset", "backbone", "training", "evaluation")
                  if len({r[key] for r in points}) > 1]
    grouped: dict[str, dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in points:
        label = (row["method"] or "unknown").split(" + ")[0]
        if qualifiers:
            label += " (" + ", ".join(str(row[key]) for key in qualifiers) + ")"
        grouped[label][int(row["bits"])].append(row)

    def by_validation(row: Mapping[str, Any]) -> tuple:
        validation = row["val_map"]
        return (validation is None, -(validation.mean if validation is not None else 0.0),
                row["members"][0]["file"])

    series: Series = {}
    for label, by_bits in sorted(grouped.items()):
        bits = sorted(by_bits)
        chosen = [min(by_bits[b], key=by_validation)["map"] for b in bits]
        series[_label_n(label, [c.n for c in chosen])] = (bits, [c.mean for c in chosen],
                                                          [_error(c) for c in chosen])
    return series


def convergence_series(entries: Sequence[Mapping[str, Any]]) -> Series:
    """Per miner (per seed group): mean cumulative training seconds -> mean validation mAP ± std over the group,
    from embeddings artifacts' history (epochs that every run of the group reached)."""
    runs = []
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
        if x:
            runs.append({"name": entry["name"], "miner": str(miner), "x": x, "y": y,
                         "key": group_key(header["config"], header["kind"])})
    series: Series = {}
    for members in group(runs, key=lambda run: run["key"], order=lambda run: run["name"]):
        epochs = min(len(run["x"]) for run in members)
        xs = [summarize([run["x"][i] for run in members]) for i in range(epochs)]
        ys = [summarize([run["y"][i] for run in members]) for i in range(epochs)]
        label = _label_n(members[0]["miner"], [len(members)])
        if label in series:
            label = _label_n(f"{members[0]['miner']} ({members[0]['name']})", [len(members)])
        series[label] = ([s.mean for s in xs], [s.mean for s in ys], [_error(s) for s in ys])
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

    Returns ``{"report", "figures", "artifacts", "rows", "groups", "skipped"}`` (rows: artifact × evaluation;
    groups: the table's rows, seeds taken together). A folder without readable
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
    groups = group_rows(rows)
    targets = plot_paths(output)
    drawings: dict[str, Any] = {}
    bits_series = map_vs_bits_series(groups)
    if bits_series:
        drawings["map-vs-bits"] = lambda: line_plot(bits_series, xlabel="bits", ylabel="mAP (recorded; mean ± std "
                                                    "over seeds)", title="mAP against code length")
    miner_series = convergence_series(entries)
    if miner_series:
        drawings["miner-convergence"] = lambda: line_plot(miner_series, xlabel="cumulative training seconds",
                                                          ylabel="validation mAP (mean ± std over seeds)",
                                                          title="Miner convergence")
    images = tsne_images(folder, recursive, targets["tsne-grid"])
    if images:
        drawings["tsne-grid"] = lambda: tsne_grid(images, folder)
    for name in drawings:
        artifacts.check_output(targets[name], force)
    figures = {}
    for name, draw in drawings.items():
        figures[name] = save_figure(draw(), targets[name], force=force)
    records.write_text_atomic(output, markdown(folder, groups, skipped, figures), force=force)
    return {"report": str(output), "figures": {k: str(v) for k, v in figures.items()}, "artifacts": len(entries),
            "rows": len(rows), "groups": len(groups),
            "skipped": [{"file": name, "reason": reason} for name, reason in skipped]}
