"""Stages: read artifacts, make the library call, write artifacts. The CLI calls exactly one of these.

Stages own the glue between the HDF5 module and the pure math modules (metrics, losses, codes)
and the progress display; they hold no math of their own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deephash_cli import artifacts
from deephash_cli.errors import DeephashError
from deephash_cli.ui import advance, progress_bar, stderr_console, warn


# --------------------------------------------------------------------------- extract


def run_extract(output: Path, *, dataset: str, data_dir: str | None, backbone: str, weights: str,
                image_size: int | None, mean: tuple[float, float, float],
                std: tuple[float, float, float], batch_size: int, device: str, workers: int,
                limit_per_class: int | None, test_fraction: float, seed: int, skip_corrupt: bool,
                force: bool, model_path: Path | None = None, shard: Any = None, split: str = "official",
                runtime: str = "eager", calibration_images: int = 256) -> Path:
    """Extract features for every split of ``dataset`` (train and test; In-shop: train, query and gallery) into a
    features artifact. ``split``: the official split or the class-disjoint one (``classes``, see
    ``datasets.class_disjoint``).

    With ``model_path`` (a ``deephash finetune`` model) the images go through that backbone + head
    with its image size and mean/std: an embeddings artifact, or for a hash model packed codes.

    ``runtime`` (runtimes.RUNTIMES) executes the network; ``int8`` calibrates on ``calibration_images``
    training images drawn with ``seed`` from the whole train split (every shard draws the same).

    ``shard`` (a ``shards.Shard``): only that slice of every split, recorded in the config's ``shard``
    (``deephash merge`` joins the slices). Under torchrun the rank's GPU is used (``distributed.select_device``).
    """
    from deephash_cli import distributed, shards
    from deephash_cli.backbones import BACKBONES, build_backbone, resolve_device
    from deephash_cli.datasets import DATASETS, SPLIT_MODES, limit_per_class as limit, load_dataset
    from deephash_cli.extract import ExtractStats, extract_chunks, make_transform
    from deephash_cli.items import names_by_index
    from deephash_cli.runtimes import RUNTIMES, build_runtime
    import torch

    RUNTIMES.get(runtime)
    finetuned, architecture, kind = None, {}, "features"
    model_sha256 = artifacts.check_input(model_path) if model_path is not None else None
    if model_path is not None:
        from deephash_cli.finetune import load_for_extract

        finetuned, architecture = load_for_extract(model_path, backbone=backbone, weights=weights,
                                                   image_size=image_size, mean=mean, std=std)
        backbone, weights, image_size = architecture["backbone"], "none", architecture["image_size"]
        mean, std = tuple(map(float, architecture["mean"])), tuple(map(float, architecture["std"]))
        kind = "codes" if architecture.get("produces") == "codes" else "embeddings"
    spec = BACKBONES.get(backbone)
    DATASETS.get(dataset)
    if split not in SPLIT_MODES:
        raise DeephashError(f"unknown --split '{split}'; valid names: {', '.join(SPLIT_MODES)}")
    if shard is not None and finetuned is None and backbone != "pixels" and weights == "none":
        raise DeephashError(f"--shard {shard} with --weights none: each shard would draw its own random "
                            f"{backbone} weights; save one state_dict and pass --weights PATH to every shard")
    artifacts.check_output(output, force)
    torch_device = distributed.select_device(distributed.from_env(), resolve_device(device))
    data = load_dataset(dataset, data_dir, split=split, test_fraction=test_fraction, seed=seed)
    sources = {name: limit(source, limit_per_class) for name, source in data.sources().items()}
    if image_size is None:  # from the whole dataset, so that every shard chooses as one process would
        image_size = native_image_size(sources) if backbone == "pixels" else 224
    calibration_source = sources["train"]
    shard_info: dict[str, Any] = {}
    if shard is not None:
        totals = {name: len(source) for name, source in sources.items()}
        ranges = {name: shards.rows(n, batch_size, shard) for name, n in totals.items()}
        sources = {name: source.subset(np.arange(*ranges[name])) for name, source in sources.items()}
        shard_info = {"shard": shards.record(shard, ranges, totals)}
        for name, (start, stop) in ranges.items():
            batches = -(-totals[name] // batch_size)
            if start == stop and batches:
                warn(f"shard {shard}: no {name} rows (its {totals[name]} rows make {batches} "
                     f"batch{'es' if batches > 1 else ''} of {batch_size} for {shard.count} shards)")
    model, spec = (finetuned, BACKBONES.get(backbone)) if finetuned is not None else build_backbone(backbone, weights)
    transform = make_transform(image_size, mean, std)
    runtime_info: dict[str, Any] = {}
    if runtime != "eager":
        from deephash_cli.extract import image_batches

        if torch_device.type != "cpu":
            raise DeephashError(f"--runtime {runtime} runs on the CPU; use --device cpu (or --runtime eager on CUDA)")
        sample = np.sort(np.random.default_rng(seed).choice(
            len(calibration_source), min(len(calibration_source), calibration_images), replace=False))
        model = build_runtime(runtime, model, torch.zeros(2, 3, image_size, image_size), lambda: image_batches(
            calibration_source.subset(sample), transform, image_size, batch_size=32))
        runtime_info = {"runtime": runtime}
        if runtime == "int8":
            runtime_info["calibration_images"] = len(sample)
    dim = spec.dim if spec.dim is not None else 3 * image_size * image_size
    weights_info: dict[str, Any] = {"weights": weights}
    if weights not in ("default", "none"):
        weights_info["weights_sha256"] = artifacts.sha256_file(weights)
    if finetuned is not None:
        dim = int(architecture["head"]["out_dim"])
        weights_info = {"model": artifacts.parent_reference(model_path, output),
                        "model_sha256": model_sha256, "produces": kind,
                        "model_config": artifacts.read_header(model_path)["config"]}
    data_root = str(Path(data_dir).resolve()) if data_dir is not None else None
    config = {"stage": "extract", "dataset": dataset, "data_dir": data_dir, "data_root": data_root,
              "backbone": backbone,
              "layer": spec.layer, "dim": dim, **weights_info, "image_size": image_size, "mean": mean,
              "std": std, "batch_size": batch_size, "device": str(torch_device),
              "limit_per_class": limit_per_class, "split": split,
              **{f"split_{k}": v for k, v in data.split_info.items()}, **runtime_info, **shard_info}
    stats = {name: ExtractStats() for name in sources}
    start = time.perf_counter()
    with artifacts.ArtifactWriter(output, kind=kind, class_names=data.class_names, config=config,
                                  parent=model_path, parent_sha256=model_sha256, force=force) as writer:
        for name, source in sources.items():
            names = names_by_index(dataset, name, source, data_dir)
            split_writer = writer.create_split(name, len(source), dim=None if kind == "codes" else dim,
                                               bits=dim if kind == "codes" else None, resizable=skip_corrupt,
                                               paths=True)
            with progress_bar(f"extract {name}" + (f" (shard {shard})" if shard is not None else ""),
                              total=len(source)) as progress:
                for chunk in extract_chunks(model, source, transform, image_size, batch_size=batch_size,
                                            device=torch_device, workers=workers, skip_corrupt=skip_corrupt,
                                            stats=stats[name], on_batch=lambda n: advance(progress, n)):
                    if kind == "codes":
                        from deephash_cli.codes import pack_codes

                        chunk = (pack_codes(chunk[0]), *chunk[1:])  # bit = output > 0, as train-hash's codes
                    split_writer.write(*chunk, [names[i] for i in chunk[2].tolist()])
            if stats[name].skipped:
                warn(f"{name}: skipped {len(stats[name].skipped)} undecodable images, e.g. {stats[name].skipped[0]}")
        seconds = time.perf_counter() - start
        total = sum(s.images for s in stats.values())
        writer.set_attr("extraction", {"seconds": round(seconds, 3), "images": total,
                                       "images_per_second": round(total / max(seconds, 1e-9), 2),
                                       "skipped": {k: s.skipped for k, s in stats.items()}})
    return output


def run_merge(paths: list[Path], output: Path, *, force: bool) -> dict[str, Any]:
    """Join the shards of one sharded extraction (``extract --shard K/N``) into the artifact one process would
    have written: rows in dataset order, the same config (``shards.plan_merge`` checks the set and says what
    differs; docs/scale.md lists the provenance that does). Shards are read one at a time, so memory holds
    the largest shard, not the collection. Returns a summary (shards, rows per split)."""
    from deephash_cli import shards
    from deephash_cli.info import resolve_reference

    for path in paths:
        if str(path) == "-":
            raise DeephashError("merge reads shard files, not stdin ('-'); give the shards' paths")
        if shards.same_file(path, output):
            raise DeephashError(f"-o {output} is one of the shards being merged; choose another output")
    artifacts.check_output(output, force)
    hashes = {str(path): artifacts.check_input(path) for path in paths}  # as read, even if a file changes later
    plan = shards.plan_merge([shards.ShardFile(artifacts.display_name(path), artifacts.read_summary(path))
                              for path in paths])
    if plan.version_differences:
        warn(f"the shards were made with different library versions or settings: "
             f"{'; '.join(plan.version_differences[:3])}; the merged file records those of "
             f"{plan.shards[0].path}")
    header = plan.shards[0].header
    config, parent = dict(plan.config), None
    if header.get("parent"):  # extract --model: the model, stored relative to each shard's folder
        parent = resolve_reference(str(header["parent"]), Path(plan.shards[0].path))
        if parent is None:
            raise DeephashError(f"{plan.shards[0].path}: its model was streamed on stdin ('-'); the merged "
                                f"artifact cannot name it")
        if "model" in config:
            config["model"] = artifacts.parent_reference(parent, output)
    sources = [{"artifact": artifacts.parent_reference(part.path, output), "sha256": hashes[part.path],
                "shard": str(part.shard), "rows": {name: split["rows"] for name, split in part.summary["splits"].items()},
                "seconds": part.extraction().get("seconds")} for part in plan.shards]
    with artifacts.ArtifactWriter(output, kind=plan.kind, class_names=plan.class_names, config=config,
                                  parent=parent, parent_sha256=header.get("parent_sha256"), force=force,
                                  versions=plan.versions) as writer:
        writers = {name: writer.create_split(name, split["rows"],
                                             dim=split["width"] if split["data"] == "features" else None,
                                             bits=split["width"] if split["data"] == "codes" else None, paths=True)
                   for name, split in plan.splits.items()}
        with progress_bar("merge", total=sum(split["rows"] for split in plan.splits.values())) as progress:
            for part in plan.shards:
                artifact = artifacts.read_artifact(part.path, expect_kinds=(plan.kind,))
                for name, split_writer in writers.items():
                    split = artifact.split(name)
                    if len(split) != part.summary["splits"][name]["rows"]:
                        raise DeephashError(f"{part.path} changed while merging ({name}: "
                                            f"{part.summary['splits'][name]['rows']} rows, then {len(split)}); "
                                            f"nothing was written")
                    split_writer.write(split.data, split.labels, split.index, split.names())
                    advance(progress, len(split), unit="rows")
        writer.set_attr("extraction", plan.extraction)
        writer.set_attr("merged_from", sources)
    return {"shards": len(plan.shards), "rows": {name: split["rows"] for name, split in plan.splits.items()}}


def native_image_size(sources: dict[str, Any]) -> int:
    """The image size the ``pixels`` backbone takes without ``--image-size``: the width of the images, which
    must all have one size (a stray 1×1 image would otherwise decide the feature dimension of the whole
    dataset). Files are measured from their headers; undecodable ones are left to extraction to report."""
    from PIL import Image

    first: dict[tuple[int, int], str] = {}
    for source in sources.values():
        for i in range(len(source)):
            where = source.describe(i)
            try:
                if Path(where).is_file():
                    with Image.open(where) as image:
                        size = image.size
                else:
                    size = source.load(i).size
            except (OSError, ValueError, DeephashError):
                continue  # extraction names it (or --skip-corrupt skips it)
            first.setdefault(tuple(size), where)
            if len(first) > 1:
                (a, where_a), (b, where_b) = list(first.items())[:2]
                raise DeephashError(f"--backbone pixels takes its feature size from the images, but they differ in "
                                    f"size: {where_a} is {a[0]}×{a[1]}, {where_b} is {b[0]}×{b[1]}; pass "
                                    f"--image-size N to resize and centre-crop every image to N×N")
    if not first:
        raise DeephashError("--backbone pixels: no image could be measured to choose the image size; pass "
                            "--image-size N")
    return next(iter(first))[0]


def run_split_classes(file: Path, output: Path, *, force: bool) -> dict[str, Any]:
    """A features artifact of the official split re-split class-disjointly, as ``extract --split classes`` makes
    it from the images (``datasets.class_disjoint``): every item of the splits pooled (train, then test), the
    first ``C // 2`` classes to ``train``, the rest to ``test``; features, labels, paths and class names kept,
    dataset indices made unique the same way (CIFAR-10's test items become ``50000 + i``).

    The same artifact as a new extraction, without decoding an image again, when the parent was extracted from
    the whole dataset (with ``--limit-per-class`` the subsets differ: extract limits after pooling). Returns the
    item counts.
    """
    from deephash_cli.artifacts import Split
    from deephash_cli.datasets import class_cut, pooled_indices

    artifacts.check_output(output, force)
    parent_sha256 = artifacts.check_input(file)
    artifact = artifacts.read_artifact(file, expect_kinds=("features",))
    config = artifact.config
    shown = artifacts.display_name(file)
    if config.get("stage") != "extract":
        raise DeephashError(f"{shown}: made by '{config.get('stage')}', not extract; only extracted features can be "
                            f"re-split (a model trained on every class has seen the held-out ones)")
    if config.get("split") == "classes" or "val" in artifact.splits:
        raise DeephashError(f"{shown}: already split by classes" if config.get("split") == "classes" else
                            f"{shown}: holds a validation split; re-split the extracted artifact")
    parts = list(artifact.splits.values())
    train_classes = set(np.unique(artifact.split("train").labels).tolist())
    other = set().union(*(np.unique(s.labels).tolist() for name, s in artifact.splits.items() if name != "train"))
    if not train_classes & other:
        raise DeephashError(f"{shown}: its splits are already class-disjoint (no class in both train and "
                            f"{', '.join(n for n in artifact.splits if n != 'train')}); use it as it is")
    cut = class_cut(len(artifact.class_names))
    labels = np.concatenate([p.labels for p in parts])
    index = np.concatenate(pooled_indices([p.index for p in parts]))
    features = np.concatenate([p.features for p in parts])
    paths = np.concatenate([p.paths for p in parts]) if all(p.paths is not None for p in parts) else None
    pooled = Split(labels, index, features=features, paths=paths)
    info = {"test_split": "classes", "pooled_from": config.get("split_test_split"), "train_classes": f"0..{cut - 1}",
            "test_classes": f"{cut}..{len(artifact.class_names) - 1}"}
    new_config = {**{k: v for k, v in config.items() if k != "split_test_split"}, "split": "classes",
                  **{f"split_{k}": v for k, v in info.items()},
                  "resplit": {"from": artifacts.parent_reference(file, output), "sha256": parent_sha256}}
    counts = {}
    with artifacts.ArtifactWriter(output, kind="features", class_names=artifact.class_names, config=new_config,
                                  parent=file, parent_sha256=parent_sha256, force=force) as writer:
        for name, rows in (("train", np.flatnonzero(labels < cut)), ("test", np.flatnonzero(labels >= cut))):
            writer.write_split(name, pooled.subset(rows))
            counts[name] = int(len(rows))
    return counts


# --------------------------------------------------------------------------- evaluate


def run_evaluate(file: Path, *, map_at: list[int], precision_at: list[int], knn_k: int, distance: str | None,
                 protocol: str, query_split: str, database_split: Sequence[str], queries_per_class: int, seed: int,
                 ties: str = "expected", record: bool = False, metrics: list[str] | None = None,
                 recall_at: list[int] | tuple[int, ...] = (), map_at_r: bool = False, nmi: bool = False
                 ) -> dict[str, Any]:
    """Evaluate retrieval on an artifact; returns the JSON-able result (the methodology is described in
    docs/results/experiments.md, "Evaluation methodology").

    The result's ``setting`` names what was evaluated (protocol, distance, selection, metrics). With
    ``record`` it is also stored in the artifact's ``.evals.json`` sidecar (``records.add_record``,
    replacing an earlier record of the same setting) and ``recorded_to`` names that file.

    ``metrics``: the names asked for (``evaluate --metric``: map, map@K, precision@K, knn), stored as the
    result's ``metrics`` list; the table shows only those. ``map`` and ``knn_accuracy`` are always computed and
    kept in the result (records, ``info`` and ``report`` read them).

    The metric-learning metrics (:mod:`deephash_cli.dml_metrics`) when asked: ``recall_at`` (Ks of Recall@K),
    ``map_at_r`` (MAP@R) and ``nmi`` (NMI of k-means over the queries, seeded with ``seed``); they go to the
    result as ``recall_at`` {K: value}, ``map_at_r``, ``nmi`` (with ``nmi_clusters``) and ``dml_queries``.
    """
    from deephash_cli.metrics import evaluate_retrieval
    from deephash_cli.protocols import select

    if record and artifacts.display_name(file) == "-":
        raise DeephashError("--record stores the result next to the artifact file; stdin has no file (save the "
                            "artifact first)")
    artifact = artifacts.read_artifact(file, expect_kinds=("features", "embeddings", "codes"))
    is_codes = artifact.kind == "codes"
    if is_codes:
        if distance not in (None, "hamming"):
            raise DeephashError(f"{file} holds binary codes: distance is Hamming, not {distance}")
        distance = "hamming"
    elif distance is None:
        distance = "euclidean"
    elif distance not in ("euclidean", "cosine"):
        raise DeephashError(f"unknown distance '{distance}'; valid names: euclidean, cosine (codes: hamming)")
    present = ", ".join(artifact.splits) or "none"
    query_gallery = protocol == "within" and "query" in artifact.splits and "gallery" in artifact.splits
    if query_split not in artifact.splits and not query_gallery:
        raise DeephashError(f"{artifacts.display_name(file)}: --query-split {query_split}: no split '{query_split}' "
                            f"(splits present: {present})")
    if protocol == "splits" and not any(name in artifact.splits for name in database_split):
        raise DeephashError(f"{artifacts.display_name(file)}: --database-split {','.join(database_split)} names no "
                            f"split of "
                            f"it (splits present: {present})")
    chosen = select(artifact, protocol=protocol, query_split=query_split, database_split=database_split,
                    queries_per_class=queries_per_class, seed=seed)
    bits = next(iter(artifact.splits.values())).bits if is_codes else None
    start = time.perf_counter()
    result = evaluate_retrieval(chosen.query, chosen.query_labels, chosen.database, chosen.database_labels,
                                distance=distance, bits=bits, map_at=tuple(map_at),
                                precision_at=tuple(precision_at), knn_k=knn_k, exclude_self=chosen.exclude_self)
    dml: dict[str, Any] = {}
    if recall_at or map_at_r:
        from deephash_cli.dml_metrics import neighbour_metrics

        neighbours = neighbour_metrics(chosen.query, chosen.query_labels, chosen.database, chosen.database_labels,
                                       distance=distance, bits=bits, recall_at=recall_at, map_at_r=map_at_r,
                                       exclude_self=chosen.exclude_self)
        dml["recall_at"] = {str(k): v for k, v in neighbours.recall_at.items()}
        if map_at_r:
            dml["map_at_r"] = neighbours.map_at_r
        dml["dml_queries"] = neighbours.queries_scored
    if nmi:
        from deephash_cli.dml_metrics import kmeans_nmi

        dml["nmi"], dml["nmi_clusters"] = kmeans_nmi(chosen.query, chosen.query_labels, distance=distance, bits=bits,
                                                     seed=seed)
    seconds = time.perf_counter() - start
    summary = {**result.to_dict(), **dml}
    summary["map_expected"] = summary["map"]
    summary["map"] = {"expected": result.map, "optimistic": result.map_optimistic,
                      "pessimistic": result.map_pessimistic}[ties]
    summary["metrics"] = list(metrics) if metrics is not None else [
        "map", *(f"map@{k}" for k in sorted(set(map_at))), *(f"precision@{k}" for k in sorted(set(precision_at))),
        "knn"]
    summary.update({"ties": ties, "file": artifacts.display_name(file), "kind": artifact.kind, "bits": bits,
                    "protocol": protocol, "selection": chosen.description, "seconds": round(seconds, 3),
                    "config": artifact.config})
    asked = {"map_at": sorted(set(map_at)), "precision_at": sorted(set(precision_at))}
    if recall_at:
        asked["recall_at"] = sorted(set(recall_at))
    if map_at_r:
        asked["map_at_r"] = True
    if nmi:
        asked["nmi"] = {"kmeans_seed": seed, "n_init": 1}
    summary["setting"] = {"protocol": protocol, "distance": distance,
                          "query_split": "query" if query_gallery else query_split,
                          "database_split": ",".join(database_split) if protocol == "splits" else
                          ("gallery" if query_gallery else None),
                          "queries_per_class": queries_per_class if protocol == "pooled" else None,
                          "seed": seed if protocol == "pooled" else None,
                          "metrics": asked, "knn_k": knn_k, "ties": ties}
    if record:
        from deephash_cli import records

        entry = {key: value for key, value in summary.items() if key != "config"}
        entry.update({"artifact_sha256": artifacts.sha256_file(file), "command": artifacts.command_line(),
                      "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        summary["recorded_to"] = str(records.add_record(file, entry))
    return summary


# --------------------------------------------------------------------------- plot-tsne


def run_plot_tsne(file: Path, output: Path, *, split: str, max_points: int, perplexity: float, seed: int,
                  title: str | None, force: bool) -> Path:
    """t-SNE of one split of an artifact, saved as a PNG."""
    from deephash_cli.plots import save_figure, scatter_by_class
    from deephash_cli.tsne import stratified_subsample, tsne_2d

    artifacts.check_output(output, force)
    artifact = artifacts.read_artifact(file, expect_kinds=("features", "embeddings", "codes"), splits=[split])
    data = artifact.split(split)
    rows = stratified_subsample(data.labels, max_points, seed)
    if artifact.kind == "codes":
        from deephash_cli.codes import codes_to_pm1

        points = codes_to_pm1(data.codes[rows], data.bits)
    else:
        points = data.features[rows]
    stderr_console().print(f"t-SNE of {len(rows)} points ({points.shape[1]}-d) ...")
    embedded = tsne_2d(points, perplexity=perplexity, seed=seed)
    config = artifact.config
    shown = artifacts.display_name(file)
    default_title = (f"{'stdin' if shown == '-' else Path(shown).name}: {split}, {len(rows)} points"
                     + (f" ({config.get('dataset')}, {config.get('backbone')})" if config.get("backbone") else ""))
    figure = scatter_by_class(embedded, data.labels[rows], artifact.class_names, title or default_title)
    return save_figure(figure, output, force=force)
