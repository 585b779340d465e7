"""Search stages: ``index`` (build, ``--add``) and ``search`` (query by image or by artifact).

Glue between artifacts (HDF5), encoders (images -> vectors) and faiss_index (the faiss calls); no math.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deephash_cli import artifacts, faiss_index, ties
from deephash_cli.artifacts import IndexItems
from deephash_cli.errors import DeephashError
from deephash_cli.faiss_index import IndexSpec
from deephash_cli.ui import stderr_console, warn

INDEXABLE = ("features", "embeddings", "codes")


# --------------------------------------------------------------------------- database items


@dataclass
class Database:
    """Items taken from splits of one artifact, with their encoder and where their images live."""

    kind: str
    width: int
    class_names: list[str]
    items: IndexItems
    encoder: dict[str, Any]
    sources: list[dict[str, Any]] = field(default_factory=list)


def _split_names(names: Sequence[str], available: list[str], path: Path) -> list[str]:
    if not names:
        raise DeephashError("--splits needs at least one split name (train, val, test)")
    # 'val' is used when present (a stage carved it from train), as evaluate's default database.
    chosen = [s for s in names if s in available or s != "val"]
    if not chosen:
        raise DeephashError(f"{path}: none of the splits {', '.join(names)} is present (splits present: "
                            f"{', '.join(available) or 'none'})")
    missing = [s for s in chosen if s not in available]
    if missing:
        raise DeephashError(f"{path}: no split '{missing[0]}' (splits present: {', '.join(available) or 'none'})")
    return chosen


def load_database(path: Path, splits: Sequence[str] | None, anchor: Path) -> Database:
    """The items of ``splits`` (split names; None: every split) of an artifact, with encoder and sources.

    ``anchor``: the index file the references will be stored in (paths are recorded relative to it too).
    """
    from deephash_cli.encoders import describe_encoder
    from deephash_cli.info import lineage_value

    artifact = artifacts.read_artifact(path, expect_kinds=INDEXABLE)
    available = list(artifact.splits)
    names = _split_names(splits, available, path) if splits is not None else available
    first = artifact.split(names[0])
    binary = artifact.kind == "codes"
    width = int(first.bits) if binary else int(first.features.shape[1])
    config = artifact.config
    dataset = lineage_value(config, "dataset")
    data_root = lineage_value(config, "data_root")
    if data_root is None and lineage_value(config, "data_dir") is not None:
        data_root = str(Path(lineage_value(config, "data_dir")).resolve())  # format 1: relative to the cwd
    reference = artifacts.parent_reference(path, anchor)
    sha = artifacts.sha256_file(path)
    parts: dict[str, list[np.ndarray]] = {"labels": [], "index": [], "paths": [], "source": [], "vectors": []}
    sources = []
    for position, name in enumerate(names):
        split = artifact.split(name)
        sources.append({"artifact": reference, "artifact_sha256": sha, "split": name, "dataset": dataset,
                        "data_root": data_root, "rows": len(split)})
        parts["labels"].append(split.labels)
        parts["index"].append(split.index)
        parts["paths"].append(np.asarray(split.names(), dtype=object))
        parts["source"].append(np.full(len(split), position, dtype=np.int64))
        parts["vectors"].append(split.data)
    items = IndexItems(*(np.concatenate(parts[key]) for key in ("labels", "index", "paths", "source")),
                       vectors=np.concatenate(parts["vectors"]), bits=width if binary else None)
    if len(items) == 0:
        raise DeephashError(f"{path}: the splits {', '.join(names)} hold no items; nothing to index")
    encoder = describe_encoder(path, artifact.attrs, artifact.kind, width)
    _anchor_files(encoder, anchor)
    return Database(artifact.kind, width, artifact.class_names, items, encoder, sources)


def _anchor_files(encoder: dict[str, Any], anchor: Path) -> None:
    """Record each encoder file also relative to the index, so moving both together keeps them found."""
    folder = Path(os.path.abspath(anchor)).parent
    for ref in (encoder.get("extractor", {}).get("weights"), encoder.get("extractor", {}).get("model"),
                (encoder.get("head") or {}).get("model")):
        if isinstance(ref, dict) and ref.get("path"):
            ref["relative"] = os.path.relpath(ref["path"], folder)


# --------------------------------------------------------------------------- index


def run_index(artifact_path: Path, output: Path, *, splits: Sequence[str], index_type: str, metric: str | None,
              parameters: dict[str, Any], tie_order: str, seed: int, force: bool) -> dict[str, Any]:
    """Build a faiss index over the database splits of a codes/embeddings/features artifact.

    ``metric`` None: hamming for codes, l2 (evaluate's default distance) for floats. ``tie_order``
    (``ties.TIE_ORDERS``): the order the items enter the index, which is the order ties come back in."""
    artifacts.check_output(output, force)
    database = load_database(artifact_path, splits, output)
    order = ties.item_order(len(database.items), tie_order, seed)
    if order is not None:
        database.items = database.items.take(order)
    binary = database.kind == "codes"
    metric = metric or ("hamming" if binary else "l2")
    if binary != (metric == "hamming"):
        raise DeephashError(f"{artifact_path} holds {'binary codes' if binary else 'float ' + database.kind}: "
                            f"metric {metric} does not apply (codes: hamming; floats: l2 or cosine)")
    spec = faiss_index.resolve(IndexSpec(index_type, binary, metric, database.width, **parameters),
                               len(database.items))
    if database.encoder.get("unavailable"):
        warn(f"{artifact_path}: new images cannot be encoded for this index ({database.encoder['unavailable']}); "
             f"it answers --queries artifacts")
    start = time.perf_counter()
    index = faiss_index.build(spec, database.items.vectors)
    trained = time.perf_counter()
    faiss_index.add(index, spec, database.items.vectors)
    seconds = {"train": round(trained - start, 3), "add": round(time.perf_counter() - trained, 3)}
    serialized = faiss_index.serialize(index)
    state = {**spec.to_dict(), "ntotal": int(index.ntotal), "trained_on": len(database.items),
             "added_after_training": 0, "faiss_class": type(index).__name__, "bytes": int(serialized.size),
             "tie_order": tie_order, "tie_seed": seed if order is not None else None}
    config = {"stage": "index", "splits": [s["split"] for s in database.sources], "kind": database.kind,
              "index": state, "seconds": seconds}
    _write(output, database.class_names, config, state, serialized, database.items, database.encoder,
           database.sources, parent=artifact_path, force=force)
    return {"items": int(index.ntotal), "bytes": int(serialized.size), "type": spec.type,
            "ties": ties.describe(state), **seconds}


def _write(output: Path, class_names: list[str], config: dict[str, Any], state: dict[str, Any],
           serialized: np.ndarray, items: IndexItems, encoder: dict[str, Any], sources: list[dict[str, Any]], *,
           parent: Path | None, force: bool, inherit: dict[str, Any] | None = None) -> None:
    with artifacts.ArtifactWriter(output, kind="index", class_names=class_names, config=config, parent=parent,
                                  force=force) as writer:
        writer.write_index(state, serialized, items, encoder, sources)
        for key, value in (inherit or {}).items():
            writer.set_attr(key, value)


def run_index_add(index_path: Path, new_path: Path, output: Path, *, splits: Sequence[str] | None,
                  force: bool) -> dict[str, Any]:
    """Append the items of another artifact (made later, by the same encoder) to an index; written atomically.

    The new items come after the old ones (so ties between old and new items favour old ones); a shuffled
    index shuffles them among themselves with its own seed."""
    from deephash_cli.encoders import differences

    if output != index_path:
        artifacts.check_output(output, force)
    stored = artifacts.read_index(index_path)
    spec = IndexSpec.from_dict(stored.spec)
    database = load_database(new_path, splits, output)
    if (database.kind == "codes") != spec.binary:
        raise DeephashError(f"{new_path} holds {database.kind}, the index holds "
                            f"{'binary codes' if spec.binary else 'float vectors'}")
    differ = differences(stored.encoder, database.encoder)
    if differ:
        raise DeephashError(f"{new_path} was made by another encoder than {index_path}: {'; '.join(differ)}")
    index = faiss_index.deserialize(stored.serialized, spec, str(index_path))
    # Classes are matched by name; classes the index has not seen are appended.
    class_names = list(stored.class_names)
    remap = []
    for name in database.class_names:
        if name not in class_names:
            class_names.append(name)
        remap.append(class_names.index(name))
    new = database.items
    tie_order, seed = ties.recorded(stored.spec)
    order = ties.item_order(len(new), tie_order, seed or 0)
    if order is not None:
        new = new.take(order)
    offset = len(stored.sources)
    faiss_index.add(index, spec, new.vectors)
    old = stored.items
    vectors = None
    if old.vectors is not None:
        vectors = np.concatenate([old.vectors, new.vectors.astype(old.vectors.dtype, copy=False)])
    items = IndexItems(np.concatenate([old.labels, np.asarray(remap, dtype=np.int64)[new.labels]]),
                       np.concatenate([old.index, new.index]), np.concatenate([old.paths, new.paths]),
                       np.concatenate([old.source, new.source + offset]), vectors, old.bits)
    serialized = faiss_index.serialize(index)
    state = {**stored.spec, "ntotal": int(index.ntotal),
             "added_after_training": int(stored.spec.get("added_after_training", 0)) + len(new),
             "bytes": int(serialized.size)}
    config = dict(stored.attrs.get("config", {}))
    config["index"] = state
    config["added"] = list(config.get("added", [])) + [{"artifact": database.sources[0]["artifact"],
                                                        "artifact_sha256": database.sources[0]["artifact_sha256"],
                                                        "items": len(new),
                                                        "splits": [s["split"] for s in database.sources]}]
    inherit = {key: stored.attrs[key] for key in ("parent", "parent_sha256") if key in stored.attrs}
    _write(output, class_names, config, state, serialized, items, stored.encoder,
           stored.sources + database.sources, parent=None, force=True, inherit=inherit)
    return {"items": int(index.ntotal), "added": len(new), "ties": ties.describe(state)}


# --------------------------------------------------------------------------- search


@dataclass
class Query:
    """One query: a name to show, its class when known, where its image is (for grids), its vector."""

    name: str
    label: int | None
    image: Callable[[], Any] | None


def _display_path(source: dict[str, Any], name: str) -> str:
    if source.get("dataset") == "imagefolder" and source.get("data_root") and not name.startswith("#"):
        return os.path.join(source["data_root"], name)
    return name


def _query_artifact(path: Path, split: str, stored: artifacts.IndexArtifact, spec: IndexSpec
                    ) -> tuple[list[Query], np.ndarray]:
    from deephash_cli.encoders import describe_encoder, differences
    from deephash_cli.info import lineage_value
    from deephash_cli.items import ItemImages

    artifact = artifacts.read_artifact(path, expect_kinds=INDEXABLE)
    binary = artifact.kind == "codes"
    if binary != spec.binary:
        found = "binary codes" if binary else f"float {artifact.kind}"
        expected = f"{spec.width}-bit codes" if spec.binary else f"{spec.width}-d float vectors"
        raise DeephashError(f"{path} holds {found}, but the index holds {expected}: query it with an artifact "
                            f"of the same kind")
    data = artifact.split(split)
    width = int(data.bits) if binary else int(data.features.shape[1])
    if width != spec.width:
        raise DeephashError(f"{path}: queries are {width}-{'bit' if binary else 'd'}, the index holds "
                            f"{spec.width}-{'bit' if binary else 'd'} vectors")
    differ = differences(stored.encoder, describe_encoder(path, artifact.attrs, artifact.kind, width))
    if differ:
        raise DeephashError(f"{path} was made by another encoder than the index: {'; '.join(differ)}")
    if len(data) == 0:
        raise DeephashError(f"{path}: split '{split}' holds no items to query with")
    dataset, root = lineage_value(artifact.config, "dataset"), lineage_value(artifact.config, "data_root")
    images = ItemImages()
    queries = []
    for label, name in zip(data.labels.tolist(), data.names()):
        class_name = artifact.class_names[label] if label < len(artifact.class_names) else None
        mapped = stored.class_names.index(class_name) if class_name in stored.class_names else None
        opener = (lambda n=name: images.open(dataset, root, n)) if not name.startswith("#") else None
        queries.append(Query(name, mapped, opener))
    return queries, data.data


def _query_images(files: list[Path], stored: artifacts.IndexArtifact, *, batch_size: int, skip_corrupt: bool,
                  device: Any, runtime: str) -> tuple[list[Query], np.ndarray]:
    from deephash_cli.datasets import CorruptImageError, _open_image
    from deephash_cli.encoders import load_encoder
    from deephash_cli.ui import advance, progress_bar

    encoder = load_encoder(stored.encoder, Path(stored.path), device, runtime)
    queries: list[Query] = []
    chunks: list[np.ndarray] = []
    skipped: list[str] = []
    with progress_bar("encode queries", total=len(files)) as progress:
        for start in range(0, len(files), batch_size):
            batch, kept = [], []
            for path in files[start:start + batch_size]:
                try:
                    batch.append(_open_image(path))
                    kept.append(path)
                except CorruptImageError as err:
                    if not skip_corrupt:
                        raise DeephashError(f"{err}; pass --skip-corrupt to leave such files out") from None
                    skipped.append(str(path))
            if batch:
                chunks.append(encoder.encode(batch))
                for path in kept:
                    folder = path.parent.name
                    label = stored.class_names.index(folder) if folder in stored.class_names else None
                    queries.append(Query(str(path), label, (lambda p=path: _open_image(p))))
            advance(progress, len(files[start:start + batch_size]))
    if skipped:
        warn(f"skipped {len(skipped)} undecodable query images, e.g. {skipped[0]}")
    if not queries:
        raise DeephashError("no query image could be decoded")
    return queries, np.concatenate(chunks)


def run_search(index_path: Path, *, images: list[str], queries_path: Path | None, query_split: str, k: int,
               nprobe: int | None, ef: int | None, nflip: int | None, skip_corrupt: bool, check_recall: bool,
               batch_size: int, device: Any, runtime: str, tie_counts: bool) -> dict[str, Any]:
    """Answer queries (image files/folders, or a split of an artifact) with the index's k nearest items.

    ``tie_counts``: flat indexes also count, per query, the items at exactly the k-th result's distance
    (``tied_at_kth``) and closer (``closer_than_kth``); approximate indexes never do (their k-th result need
    not be the true k-th, and counting would be the exhaustive scan they exist to avoid)."""
    from deephash_cli.encoders import expand_queries
    from deephash_cli.runtimes import NEEDS_CALIBRATION, RUNTIMES

    RUNTIMES.get(runtime)
    if runtime in NEEDS_CALIBRATION:
        raise DeephashError(f"--runtime {runtime} is for extract (it calibrates on training images); search with "
                            f"eager or onnx")

    if k <= 0:
        raise DeephashError(f"-k must be positive, got {k}")
    if batch_size <= 0:
        raise DeephashError(f"--batch-size must be positive, got {batch_size}")
    if bool(images) == (queries_path is not None):
        raise DeephashError("give query images (files or folders) or --queries ARTIFACT, not both and not neither")
    stored = artifacts.read_index(index_path)
    spec = IndexSpec.from_dict(stored.spec)
    ntotal = len(stored.items)
    if k > ntotal:
        raise DeephashError(f"-k {k} exceeds the {ntotal} items in {index_path}")
    index = faiss_index.deserialize(stored.serialized, spec, str(index_path))
    if index.ntotal != ntotal:
        raise DeephashError(f"{index_path}: the faiss index holds {index.ntotal} items but /items lists {ntotal}")
    start = time.perf_counter()
    if queries_path is not None:
        queries, vectors = _query_artifact(queries_path, query_split, stored, spec)
    else:
        files = expand_queries(images)
        queries, vectors = _query_images(files, stored, batch_size=batch_size, skip_corrupt=skip_corrupt,
                                         device=device, runtime=runtime)
    encoded = time.perf_counter()
    prepared = faiss_index.prepare(spec, vectors)
    raw, ids = faiss_index.search(index, prepared, k, nprobe=nprobe, ef=ef, nflip=nflip)
    distances = faiss_index.to_distances(spec, raw)
    searched = time.perf_counter()
    counted = tie_counts and spec.is_exact
    closer, tied = faiss_index.count_ties(index, spec, prepared, raw, ids) if counted else (None, None)
    result: dict[str, Any] = {"index": str(index_path), "type": spec.type, "metric": spec.metric, "k": k,
                              "items": ntotal, "tie_order": ties.describe(stored.spec), "queries": [],
                              "seconds": {"encode": round(encoded - start, 4), "search": round(searched - encoded, 4)}}
    if counted:
        result["seconds"]["ties"] = round(time.perf_counter() - searched, 4)
    if check_recall:
        result["recall"] = _recall(stored, spec, prepared, distances, ids, k)
    items = stored.items
    for q, query in enumerate(queries):
        rows = []
        for rank, (item, distance) in enumerate(zip(ids[q].tolist(), distances[q].tolist()), start=1):
            if item < 0:
                continue
            label = int(items.labels[item])
            source = stored.sources[int(items.source[item])]
            name = str(items.paths[item])
            rows.append({"rank": rank, "id": int(item), "name": name, "path": _display_path(source, name),
                         "label": label, "class": stored.class_names[label],
                         "distance": int(distance) if spec.binary else float(distance),
                         "split": source.get("split"), "relevant": None if query.label is None else label == query.label})
        answer = {"query": query.name, "label": query.label,
                  "class": None if query.label is None else stored.class_names[query.label], "results": rows}
        if counted:
            answer.update(tied_at_kth=int(tied[q]), closer_than_kth=int(closer[q]))
        result["queries"].append(answer)
    result["_queries"] = queries  # image openers for grids (not JSON)
    result["_stored"] = stored
    return result


def _recall(stored: artifacts.IndexArtifact, spec: IndexSpec, prepared: np.ndarray, distances: np.ndarray,
            ids: np.ndarray, k: int) -> dict[str, Any]:
    if spec.is_exact:
        return {"recall_at_k": 1.0, "k": k, "note": "flat index: exact search"}
    if stored.items.vectors is None:
        raise DeephashError(f"{stored.path} stores no item vectors, so --check-recall has no exact reference")
    exact_d, exact_i = faiss_index.exact_neighbours(spec, stored.items.vectors, prepared, k)
    if spec.binary:
        # The approximate index's distances are exact Hamming distances of the ids it returns.
        value = faiss_index.recall_at_k(spec, distances, ids, exact_d, exact_i)
    else:
        value = faiss_index.recall_at_k(spec, distances, ids, faiss_index.to_distances(spec, exact_d), exact_i)
    return {"recall_at_k": value, "k": k, "note": "against exact (flat) search over the stored item vectors"}


def print_recall(result: dict[str, Any]) -> None:
    """``--check-recall``'s line on stderr (tables and JSON lines keep stdout)."""
    recall = result["recall"]
    stderr_console().print(f"recall@{recall['k']} {recall['recall_at_k']:.4f} over {len(result['queries'])} "
                           f"queries ({recall['note']})", soft_wrap=True)


def print_results(result: dict[str, Any], echo: Callable[[str], None]) -> None:
    """The readable view: one small table per query (rank, path, class, distance), with a line under it when
    the k results are a choice among items tied at the k-th distance (``ties.table_line``)."""
    for q, query in enumerate(result["queries"], start=1):
        known = f" (class {query['class']})" if query["class"] is not None else ""
        echo(f"query {q}: {query['query']}{known}")
        width = max([len(r["path"]) for r in query["results"]] + [4])
        echo(f"  {'rank':>4}  {'path':<{width}}  {'class':<12} distance")
        for row in query["results"]:
            mark = "" if row["relevant"] is None else (" +" if row["relevant"] else " -")
            distance = f"{row['distance']}" if isinstance(row["distance"], int) else f"{row['distance']:.4f}"
            echo(f"  {row['rank']:>4}  {row['path']:<{width}}  {row['class']:<12} {distance}{mark}")
        line = ties.table_line(query)
        if line is not None:
            echo(f"  {line}")
