"""`deephash info`: what an artifact holds, how it was made, and whether its ancestors are intact.

``describe`` returns one JSON-able dict (the ``--json`` output); ``render`` turns it into the
human view. Provenance follows ``parent`` attributes back to the ``extract`` artifact and its
dataset: a stored relative path is resolved against the child's folder (artifacts written
before parents were stored that way: against the working directory), and each parent's
SHA-256 is compared with the child's ``parent_sha256``: ``ok``, ``changed`` or ``missing``
(``streamed`` when the parent came from stdin, ``unreadable`` when it is no longer an artifact).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from deephash_cli import artifacts, records, ties
from deephash_cli.errors import DeephashError

MAX_DEPTH = 64
TRAINING_STAGES = ("train-triplet", "train-hash")


# --------------------------------------------------------------------------- config lookups (shared with report)


def lineage_value(config: Mapping[str, Any], key: str) -> Any:
    """``key`` from a config, else from the configs it embeds (``input``, ``source``, ``model_config``)."""
    seen = 0
    queue: list[Mapping[str, Any]] = [config]
    while queue and seen < MAX_DEPTH:
        current = queue.pop(0)
        seen += 1
        if current.get(key) is not None:
            return current[key]
        queue += [current[name] for name in ("input", "source", "model_config") if isinstance(current.get(name), dict)]
    return None


def method_of(config: Mapping[str, Any]) -> str | None:
    """The loss or hash method and the triplet source: 'facenet + semihard', 'dtsh + random', 'pixels'.

    DTSH trained with a λ warm-up or an α ramp is named 'dtsh-schedule'; other constants than the defaults
    (λ = 1/bits, α = bits/2) are named, e.g. 'dtsh λ=1' (the paper's).
    """
    stage = config.get("stage")
    model_config = config.get("model_config") if isinstance(config.get("model_config"), dict) else {}
    training = config if stage in TRAINING_STAGES else model_config
    name = config.get("method") or config.get("loss") or training.get("method") or training.get("loss")
    if name is None:
        return None
    if name == "dtsh" and training and (training.get("alpha_ramp") or training.get("lam_warmup")):
        name = "dtsh-schedule"  # a different method in effect; keep it apart in tables and plots
    elif name == "dtsh" and training and isinstance(training.get("bits"), int):
        bits, lam, alpha = training["bits"], training.get("lam"), training.get("alpha")
        # Constants other than the defaults (λ = 1/bits, α = bits/2) are named, e.g. the paper's 'dtsh λ=1'.
        if isinstance(lam, (int, float)) and not math.isclose(lam, 1 / bits):
            name += f" λ={lam:g}"
        if isinstance(alpha, (int, float)) and not math.isclose(alpha, bits / 2):
            name += f" α={alpha:g}"
    miner = training.get("miner") if training else None
    return f"{name} + {miner or 'random'}" if training else str(name)


def bits_of(config: Mapping[str, Any], splits: Mapping[str, Mapping[str, Any]]) -> int | None:
    """Code length: the codes' ``bits`` attribute, else the config's ``bits``."""
    for split in splits.values():
        if split.get("bits"):
            return int(split["bits"])
    bits = config.get("bits")
    return int(bits) if isinstance(bits, (int, float)) else None


def seconds_of(header: Mapping[str, Any]) -> dict[str, Any] | None:
    """Cost of making the artifact: training seconds per epoch (of the chosen run) or extraction seconds."""
    config = header.get("config", {})
    extraction = _json(header.get("extraction"))
    if isinstance(extraction, dict) and "seconds" in extraction:
        return {"seconds": float(extraction["seconds"]), "per": "extraction"}
    training = config if config.get("stage") in TRAINING_STAGES else config.get("model_config") or {}
    if training.get("seconds_per_epoch") is not None:
        return {"seconds": float(training["seconds_per_epoch"]), "per": "epoch"}
    for run in training.get("margin_search") or []:
        if run.get("margin") == training.get("chosen_margin") and run.get("seconds_per_epoch") is not None:
            return {"seconds": float(run["seconds_per_epoch"]), "per": "epoch"}
    return None


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def key_config(header: Mapping[str, Any], splits: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The few settings that identify a result: dataset, backbone, stage, method, bits, margin, val mAP."""
    config = header.get("config", {})
    split = lineage_value(config, "split")  # extract: "official"/"classes"; finetune: its split info
    class_disjoint = split == "classes" or (isinstance(split, dict) and split.get("test_split") == "classes")
    keys = {"stage": config.get("stage"), "dataset": lineage_value(config, "dataset"),
            "split": "classes (class-disjoint)" if class_disjoint else None,
            "backbone": lineage_value(config, "backbone"), "method": method_of(config),
            "bits": bits_of(config, splits), "dim": config.get("dim"),
            "chosen_margin": lineage_value(config, "chosen_margin"),
            "best_val_map": lineage_value(config, "best_val_map"), "best_epoch": lineage_value(config, "best_epoch"),
            "seconds": seconds_of(header)}
    shard = config.get("shard")
    if isinstance(shard, dict):  # extract --shard K/N (docs/scale.md)
        keys["shard"] = f"{shard.get('index')}/{shard.get('count')}"
    merged = _json(header.get("merged_from"))
    if isinstance(merged, list):  # deephash merge
        keys["merged_from"] = f"{len(merged)} shards"
    return {key: value for key, value in keys.items() if value is not None}


# --------------------------------------------------------------------------- provenance


def resolve_reference(reference: str, child: Path) -> Path | None:
    """Where a stored parent/model reference points: absolute as stored, relative to the child's folder, or
    (older artifacts) relative to the working directory; None for '-' (stdin)."""
    if reference == "-":
        return None
    stored = Path(reference)
    if stored.is_absolute():
        return stored
    candidate = Path(os.path.normpath(child.parent / stored))
    if not candidate.exists() and stored.exists():
        return stored
    return candidate


def check_link(reference: str, expected_sha256: str | None, child: Path) -> dict[str, Any]:
    """One provenance link: the stored reference, the resolved path and its status."""
    link: dict[str, Any] = {"reference": reference, "expected_sha256": expected_sha256}
    path = resolve_reference(reference, child)
    if path is None:
        link.update(status="streamed", path=None)
        return link
    link["path"] = str(path)
    if not path.is_file():
        link["status"] = "missing"
        return link
    found = artifacts.sha256_file(path)
    link["found_sha256"] = found
    link["status"] = "ok" if expected_sha256 is None or found == expected_sha256 else "changed"
    return link


def provenance(path: Path, header: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Follow ``parent`` links from ``path`` back to the dataset; one dict per ancestor, nearest first.

    The last entry is ``{"dataset": ...}`` when the chain reaches an ``extract`` artifact.
    """
    chain: list[dict[str, Any]] = []
    child, child_header = path, header
    visited = {os.path.abspath(path)}
    while len(chain) < MAX_DEPTH:
        reference = child_header.get("parent")
        if reference is None:
            config = child_header.get("config", {})
            if config.get("stage") == "extract" or "dataset" in config:
                chain.append({"dataset": config.get("dataset"), "data_dir": config.get("data_dir"),
                              "backbone": config.get("backbone"),
                              "limit_per_class": config.get("limit_per_class")})
            break
        link = check_link(str(reference), child_header.get("parent_sha256"), child)
        chain.append(link)
        if link["status"] not in ("ok", "changed"):
            break
        parent = Path(link["path"])
        if os.path.abspath(parent) in visited:
            link["status"] = "cycle"
            break
        visited.add(os.path.abspath(parent))
        try:
            parent_header = artifacts.read_header(parent)
        except DeephashError as err:
            link.update(status="unreadable", reason=str(err))
            break
        link.update(kind=parent_header["kind"], stage=parent_header["config"].get("stage"),
                    command=parent_header.get("command"), created=parent_header.get("created"))
        child, child_header = parent, parent_header
    return chain


# --------------------------------------------------------------------------- describe / render


def describe(path: Path) -> dict[str, Any]:
    """Everything ``info`` shows about one artifact, as a JSON-able dict."""
    summary = artifacts.read_summary(path)
    header = summary["header"]
    shown = artifacts.display_name(path)
    config = header.get("config", {})
    info: dict[str, Any] = {
        "file": shown, "kind": header["kind"], "format_version": header["format_version"],
        "created": header.get("created"), "generator": header.get("generator"), "command": header.get("command"),
        "cwd": header.get("cwd"),
        "splits": summary["splits"], "class_names": summary["class_names"],
        "key_config": key_config(header, summary["splits"]), "history_epochs": len(summary["history"]),
        "sha256": artifacts.sha256_file(path), "config": config,
        "versions": header.get("versions", {}),
    }
    if summary["model"] is not None:
        architecture = summary["model"]["architecture"]
        # A fine-tuned model nests its head's architecture next to the backbone's name and input size.
        head = architecture["head"] if isinstance(architecture.get("head"), dict) else architecture
        info["model"] = {"parameters": summary["model"]["parameters"],
                         **{key: head.get(key) for key in ("head", "in_dim", "out_dim", "hidden", "output")},
                         "produces": architecture.get("produces"),
                         **({"backbone": architecture.get("backbone"), "image_size": architecture.get("image_size"),
                             "init": architecture.get("init")} if head is not architecture else {})}
    if summary.get("index"):
        info["index"] = index_summary(summary["index"], Path(path))
    evaluations, bad = ([], []) if shown == "-" else records.read_records_checked(path)
    info["skipped_evaluations"] = [{"entry": position, "reason": reason} for position, reason in bad]
    info["evaluations"] = [{**{key: e.get(key) for key in ("map", "knn_accuracy", "precision_at", "map_at",
                                                              "selection", "recorded", "command")},
                            "setting": e["setting"], "current": e.get("artifact_sha256") == info["sha256"]}
                           for e in evaluations]
    origin = Path.cwd() / "stdin" if shown == "-" else Path(path)
    info["provenance"] = provenance(origin, header)
    if config.get("stage") == "encode" and config.get("model"):
        info["model_link"] = check_link(str(config["model"]), config.get("model_sha256"), origin)
    return info


def index_summary(index: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """An index artifact's faiss spec, counts, sources and encoder, each encoder file checked (ok, changed,
    missing) where the index would look for it."""
    encoder = dict(index.get("encoder") or {})
    files = []
    for role, ref in (("weights", (encoder.get("extractor") or {}).get("weights")),
                      ("model", (encoder.get("extractor") or {}).get("model")),
                      ("head model", (encoder.get("head") or {}).get("model"))):
        if isinstance(ref, dict) and ref.get("path"):
            candidates = [Path(os.path.normpath(path.parent / ref["relative"]))] if ref.get("relative") else []
            candidates.append(Path(ref["path"]))
            found = next((c for c in candidates if c.is_file()), None)
            status = "missing" if found is None else (
                "ok" if not ref.get("sha256") or artifacts.sha256_file(found) == ref["sha256"] else "changed")
            files.append({"role": role, "path": str(found or candidates[-1]), "status": status,
                          "expected_sha256": ref.get("sha256")})
    return {**index, "encoder_files": files}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _link_line(link: Mapping[str, Any]) -> str:
    where = link.get("path") or "stdin"
    line = f"{link['status']:<9} {where}"
    if link.get("kind"):
        line += f"  ({link['kind']}, {link.get('stage') or 'unknown stage'})"
    if link["status"] == "changed":
        line += f"  sha256 {link['found_sha256'][:12]}… ≠ recorded {str(link['expected_sha256'])[:12]}…"
    elif link["status"] == "streamed":
        line += f"  (read from stdin, sha256 {str(link['expected_sha256'])[:12]}…; not followed)"
    elif link.get("reason"):
        line += f"  ({link['reason']})"
    return line


def render(info: Mapping[str, Any]) -> str:
    """The human view of ``describe``'s dict (plain text)."""
    lines = [f"{info['file']}: {info['kind']} artifact (format_version {info['format_version']})",
             f"  created   {info['created']} by {info['generator']}",
             f"  command   {info['command']}",
             *([f"  cwd       {info['cwd']}  (the command's relative paths start here)"] if info.get("cwd") else []),
             f"  sha256    {info['sha256']}"]
    versions = info.get("versions") or {}
    if isinstance(versions, Mapping) and versions.get("torch_threads"):
        lines.append(f"  runtime   torch {versions.get('torch')}, {versions['torch_threads']} intra-op threads, "
                     f"deterministic algorithms {versions.get('torch_deterministic', 'unknown')} (rerun with "
                     f"OMP_NUM_THREADS={versions['torch_threads']} to reproduce)")
    lines.append("splits:" if info["kind"] != "index" else "splits: (an index holds items, below)")
    for name, split in info["splits"].items():
        shape = "×".join(str(n) for n in split["shape"])
        bits = f", {split['bits']} bits" if split.get("bits") else ""
        lines.append(f"  {name:<7} {split['rows']:>8} rows  {split['data']} {shape} {split['dtype']}{bits}")
    if not info["splits"] and info["kind"] != "index":
        lines.append("  (none)")
    names = info["class_names"]
    if names:
        shown = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
        lines.append(f"classes ({len(names)}): {shown}")
    if info.get("index"):
        lines += _index_lines(info["index"])
    if info.get("model"):
        model = info["model"]
        backbone = (f"fine-tuned {model['backbone']} at {model.get('image_size')} px"
                    f"{' (from ' + str(model['init']) + ')' if model.get('init') else ''} + "
                    if model.get("backbone") else "")
        lines.append(f"model: {backbone}{model.get('head')} head {model.get('in_dim')}→{model.get('out_dim')} "
                     f"(hidden {model.get('hidden')}, output {model.get('output')}, produces {model.get('produces')}), "
                     f"{model['parameters']:,} parameter values")
    lines.append("config:")
    for key, value in info["key_config"].items():
        if key == "seconds":
            value = f"{value['seconds']:.2f} s per {value['per']}"
        lines.append(f"  {key:<14} {_fmt(value)}")
    if info["history_epochs"]:
        lines.append(f"  {'history':<14} {info['history_epochs']} epochs")
    lines.append("evaluations:" if info["evaluations"] else "evaluations: none recorded (evaluate --record)")
    for record in info["evaluations"]:
        setting = record["setting"]
        precision = ", ".join(f"P@{k} {v:.4f}" for k, v in (record.get("precision_at") or {}).items())
        stale = "" if record["current"] else "  [recorded for another version of this file]"
        lines.append(f"  {setting['protocol']}/{setting['distance']}: mAP {record['map']:.4f}, kNN "
                     f"{record['knn_accuracy']:.4f}{', ' + precision if precision else ''}  ({record['selection']})"
                     f"{stale}")
    for bad in info.get("skipped_evaluations", []):
        lines.append(f"  skipped entry {bad['entry']} of {info['file']}.evals.json: {bad['reason']}")
    lines.append("provenance:")
    lines.append(f"  this      {info['file']}")
    for link in info["provenance"]:
        if "dataset" in link:
            extra = f", limit {link['limit_per_class']} per class" if link.get("limit_per_class") else ""
            lines.append(f"  dataset   {link['dataset']}" + (f" ({link['data_dir']})" if link.get("data_dir") else "")
                         + f", backbone {link['backbone']}{extra}")
        else:
            lines.append("  parent    " + _link_line(link))
    if info.get("model_link"):
        lines.append("  model     " + _link_line(info["model_link"]))
    return "\n".join(lines)


def _index_lines(index: Mapping[str, Any]) -> list[str]:
    spec = index["spec"]
    what = f"{spec.get('width')}-bit codes" if spec.get("binary") else f"{spec.get('width')}-d vectors"
    params = ", ".join(f"{key} {spec[key]}" for key in ("nlist", "hnsw_m", "nhash", "hash_bits", "pq_m")
                       if spec.get(key) is not None and (key != "hnsw_m" or spec.get("type") == "hnsw"))
    per_item = index["bytes"] / max(index["items"], 1)
    lines = [f"index: {spec.get('type')} ({spec.get('faiss_class')}) over {what}, metric {spec.get('metric')}"
             + (f"; {params}" if params else ""),
             f"  items     {index['items']:,} ({spec.get('trained_on', 0):,} when trained, "
             f"{spec.get('added_after_training', 0):,} added after training)",
             f"  size      {index['bytes']:,} bytes of faiss index ({per_item:.1f} per item)",
             f"  ties      {_tie_order_line(spec)}"]
    for source in index.get("sources", []):
        lines.append(f"  source    {source.get('artifact')} [{source.get('split')}] {source.get('rows')} rows"
                     + (f", {source.get('dataset')}" if source.get("dataset") else "")
                     + (f" at {source.get('data_root')}" if source.get("data_root") else ""))
    encoder = index.get("encoder") or {}
    extractor = encoder.get("extractor") or {}
    if encoder.get("unavailable"):
        lines.append(f"  encoder   unavailable: {encoder['unavailable']} (query with --queries ARTIFACT)")
    else:
        base = "fine-tuned model" if extractor.get("type") == "finetuned" else str(extractor.get("backbone"))
        head = " + head model" if encoder.get("head") else ""
        lines.append(f"  encoder   {base}{head} at {encoder.get('image_size')} px, mean {encoder.get('mean')}, "
                     f"std {encoder.get('std')} -> {encoder.get('produces')}")
    for file in index.get("encoder_files", []):
        lines.append(f"  {file['role']:<9} {file['status']:<8} {file['path']}")
    return lines


def _tie_order_line(spec: Mapping[str, Any]) -> str:
    order, seed = ties.recorded(spec)
    if order == "shuffled":
        return (f"shuffled (seed {seed}): items entered in a seeded random order, so equal distances come back "
                f"in random, reproducible order")
    return "database order: equal distances come back lowest database position first"


def statuses(info: Mapping[str, Any]) -> Iterable[str]:
    """Statuses of every provenance link (and the model link of codes), for scripts and tests."""
    links = [link for link in info["provenance"] if "status" in link]
    if info.get("model_link"):
        links.append(info["model_link"])
    return [link["status"] for link in links]
