"""Sharded extraction: which rows the K-th of N processes extracts, what its output is called, and whether a
set of shards joins into the artifact one process would have written (``deephash merge``).

Numbering: shards are ``K/N`` with K from 0 to N-1, as Slurm array task ids (``--array=0-7``) and torchrun
ranks are numbered.

Slicing: each split (train, test) is cut on its own into N contiguous runs of rows, in the order one process
writes them (the dataset order). The cuts fall between whole batches: a split of n rows is ⌈n/B⌉ batches of
``--batch-size`` B, and shard K takes the K-th of the N runs of batches ``numpy.array_split`` makes (the
first ⌈n/B⌉ mod N shards one batch more). So every batch a shard puts through the network is a batch a single
process puts through it, and the features are bitwise equal even on backends whose results depend on what
else is in the batch. Rows of shard K come before those of shard K+1: the merged file is in dataset order.

A shard records ``shard`` in its config: ``{"index": K, "count": N, "rows": {split: [start, stop]},
"total": {split: n}}`` (rows as positions in the split a single process writes, stop excluded). ``merge``
checks with it that the shards are one complete set (every K of one N once, each covering its rows) made
with the same settings, and writes the config a single process would have written (:func:`plan_merge`).

Nothing here reads or writes HDF5 (``artifacts`` does, driven by ``stages.run_merge``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from deephash_cli.errors import DeephashError

# Config fields that may differ between shards of one set (merge documents each, docs/scale.md):
# shard (which slice; dropped from the merged config), device (under torchrun every rank names its own GPU;
# only the device type must agree) and model (the fine-tuned model's path, stored relative to each shard's
# folder; merge compares model_sha256 and stores the path relative to the merged file).
PER_SHARD_FIELDS = ("shard", "device", "model")


@dataclass(frozen=True)
class Shard:
    """The K-th (``index``, from 0) of ``count`` slices of every split."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """``shard-00003-of-00008``: the part of a shard's file name that says which shard it is."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"


def parse(text: str) -> Shard:
    """``--shard K/N`` -> Shard(K, N); N ≥ 1 and 0 ≤ K < N, else a one-line DeephashError."""
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
    if match is None:
        raise DeephashError(f"--shard {text}: expected K/N, two whole numbers such as 0/4 (shard K of N, K from 0 "
                            f"to N-1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise DeephashError(f"--shard {text}: N must be ≥ 1, got {count}")
    if not 0 <= index < count:
        raise DeephashError(f"--shard {text}: K must lie in 0..{count - 1} (shards are numbered from 0), got {index}")
    return Shard(index, count)


def choose(text: str | None) -> Shard | None:
    """The shard this process extracts: ``--shard K/N`` when given, else under torchrun (``WORLD_SIZE`` > 1)
    ``RANK/WORLD_SIZE``, else None (the whole dataset). Both at once is refused: every rank would write the
    same shard."""
    from deephash_cli import distributed

    context = distributed.from_env()
    if text is not None:
        shard = parse(text)
        if context.enabled:
            raise DeephashError(f"--shard {text} given under torchrun (WORLD_SIZE={context.world_size}), which "
                                f"already gives each process its shard RANK/WORLD_SIZE; drop --shard")
        return shard
    return Shard(context.rank, context.world_size) if context.enabled else None


def output_path(path: Path, shard: Shard) -> Path:
    """Where shard K/N of output ``path`` goes: ``OUT.h5`` -> ``OUT.shard-0000K-of-0000N.h5`` (a name
    without ``.h5`` gets the tag and ``.h5`` appended)."""
    stem = path.name[:-len(".h5")] if path.name.endswith(".h5") else path.name
    return path.with_name(f"{stem}.{shard.tag}.h5")


def rows(n: int, batch_size: int, shard: Shard) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a split of ``n`` rows that ``shard`` extracts (whole batches; see the
    module docstring)."""
    if batch_size <= 0:
        raise DeephashError(f"--batch-size must be positive, got {batch_size}")
    batches = -(-n // batch_size)
    base, extra = divmod(batches, shard.count)
    first = shard.index * base + min(shard.index, extra)
    last = first + base + (1 if shard.index < extra else 0)
    return min(first * batch_size, n), min(last * batch_size, n)


def record(shard: Shard, ranges: Mapping[str, tuple[int, int]], totals: Mapping[str, int]) -> dict[str, Any]:
    """The ``shard`` entry of a shard's config."""
    return {"index": shard.index, "count": shard.count, "rows": {name: list(r) for name, r in ranges.items()},
            "total": dict(totals)}


# --------------------------------------------------------------------------- merge


@dataclass
class ShardFile:
    """One input of ``merge``: its name, header (``artifacts.read_summary``: header, class names, splits) and
    the shard it says it is."""

    path: str
    summary: Mapping[str, Any]
    shard: Shard = field(init=False)
    record: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        entry = config.get("shard")
        if config.get("stage") != "extract" or entry is None:
            made = f"made by '{config.get('stage')}'" if config.get("stage") != "extract" else \
                "made by extract without --shard"
            raise DeephashError(f"{self.path}: not a shard ({made}); merge joins the outputs of "
                                f"`deephash extract --shard K/N` (or of extract under torchrun)")
        try:
            self.shard = Shard(int(entry["index"]), int(entry["count"]))
            self.record = {"rows": {name: (int(r[0]), int(r[1])) for name, r in entry["rows"].items()},
                           "total": {name: int(n) for name, n in entry["total"].items()}}
        except (TypeError, KeyError, ValueError, IndexError, AttributeError):
            raise DeephashError(f"{self.path}: config field 'shard' is damaged (expected index, count, rows and "
                                f"total; found {entry!r:.120})") from None
        if not 0 <= self.shard.index < self.shard.count:
            raise DeephashError(f"{self.path}: config field 'shard' says {self.shard}, outside 0..N-1")
        batch_size = config.get("batch_size")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise DeephashError(f"{self.path}: config field 'batch_size' must be a positive integer (it decides "
                                f"the shard's rows), found {batch_size!r}")

    @property
    def header(self) -> Mapping[str, Any]:
        return self.summary["header"]

    @property
    def config(self) -> Mapping[str, Any]:
        return self.header.get("config", {})

    def extraction(self) -> dict[str, Any]:
        """The shard's ``extraction`` attribute (seconds, images, skipped files per split)."""
        import json

        value = self.header.get("extraction")
        try:
            parsed = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise DeephashError(f"{self.path}: attribute 'extraction' is missing or not a JSON object (every "
                                f"extract writes it)")
        return parsed


@dataclass
class MergePlan:
    """What ``merge`` writes: the shards in order (shard 0 first), the kind, class names, rows and width per
    split, and the root attributes of the merged artifact."""

    shards: list[ShardFile]
    kind: str
    class_names: list[str]
    splits: dict[str, dict[str, Any]]  # name -> {rows, width (dim or bits), data: features|codes}
    config: dict[str, Any]
    extraction: dict[str, Any]
    versions: dict[str, Any]
    version_differences: list[str]


def _device_type(device: Any) -> str:
    return str(device).split(":")[0]


def _differences(first: ShardFile, other: ShardFile) -> list[str]:
    """Settings in which ``other`` differs from ``first``: 'name: first's vs other's'."""
    found = []
    for name, a, b in (("kind", first.header["kind"], other.header["kind"]),
                       ("format_version", first.header["format_version"], other.header["format_version"]),
                       ("class names", first.summary["class_names"], other.summary["class_names"])):
        if a != b:
            found.append(f"{name}: {a!r} vs {b!r}")
    a_config, b_config = first.config, other.config
    for key in sorted(set(a_config) | set(b_config)):
        if key in PER_SHARD_FIELDS:
            continue
        if a_config.get(key) != b_config.get(key):
            found.append(f"{key}: {a_config.get(key)!r:.80} vs {b_config.get(key)!r:.80}")
    if _device_type(a_config.get("device")) != _device_type(b_config.get("device")):
        found.append(f"device: {a_config.get('device')!r} vs {b_config.get('device')!r} (CPU and GPU features "
                     f"differ in their last bits)")
    if first.record["total"] != other.record["total"]:
        found.append(f"dataset size: {first.record['total']} vs {other.record['total']} rows per split")
    for name in sorted(set(first.summary["splits"]) | set(other.summary["splits"])):
        a, b = first.summary["splits"].get(name), other.summary["splits"].get(name)
        if a is None or b is None or a["shape"][1:] != b["shape"][1:] or a.get("bits") != b.get("bits"):
            describe = (lambda s: "absent" if s is None else f"{s['data']} {s['shape'][1:]}")
            found.append(f"split {name}: {describe(a)} vs {describe(b)}")
    return found


def plan_merge(files: Sequence[ShardFile]) -> MergePlan:
    """Check that ``files`` are one complete set of shards made with the same settings and say what the merged
    artifact holds. Every refusal is one line naming the files, what was expected and what was found."""
    if not files:
        raise DeephashError("merge needs the shard files (deephash merge SHARD... -o FILE)")
    first = files[0]
    count = first.shard.count
    for other in files[1:]:
        if other.shard.count != count:
            raise DeephashError(f"{other.path} is shard {other.shard} but {first.path} is shard {first.shard}: "
                                f"shards of different N (expected N={count}, found N={other.shard.count})")
    seen: dict[int, ShardFile] = {}
    for other in files:
        if other.shard.index in seen:
            raise DeephashError(f"shard {other.shard} given twice: {seen[other.shard.index].path} and {other.path}")
        seen[other.shard.index] = other
    for other in files[1:]:
        differ = _differences(first, other)
        if differ:
            raise DeephashError(f"{other.path} was made with other settings than {first.path}: "
                                f"{'; '.join(differ)} ({first.path} vs {other.path})")
    missing = [k for k in range(count) if k not in seen]
    if missing:
        shown = ", ".join(f"{k}/{count}" for k in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise DeephashError(f"incomplete set of {count} shards: missing {shown} (found {len(seen)} of {count}: "
                            f"{', '.join(str(k) for k in sorted(seen)[:10])}{', ...' if len(seen) > 10 else ''})")
    ordered = [seen[k] for k in range(count)]
    batch_size = int(first.config["batch_size"])
    skipped: dict[str, list[str]] = {}
    for part in ordered:
        extraction = part.extraction()
        part_skipped = extraction.get("skipped") or {}
        for name, total in part.record["total"].items():
            expected = rows(total, batch_size, part.shard)
            found = part.record["rows"].get(name)
            if found != expected:
                raise DeephashError(f"{part.path}: shard {part.shard} records {name} rows "
                                    f"{list(found) if found else found}, but shard "
                                    f"{part.shard} of {total} rows in batches of {batch_size} is rows "
                                    f"{list(expected)} (made by another deephash version?)")
            held = part.summary["splits"].get(name, {}).get("rows", 0)
            left_out = len(part_skipped.get(name) or [])
            if held + left_out != expected[1] - expected[0]:
                raise DeephashError(f"{part.path}: split {name} holds {held} rows and {left_out} skipped images, "
                                    f"but shard {part.shard} covers rows {expected[0]}..{expected[1] - 1} "
                                    f"({expected[1] - expected[0]} images); the file is incomplete or was edited")
            skipped.setdefault(name, []).extend(part_skipped.get(name) or [])
    skipped = {name: skipped.get(name, []) for name in first.summary["splits"]}  # in the splits' order
    splits = {}
    for name, info in first.summary["splits"].items():
        splits[name] = {"rows": sum(p.summary["splits"][name]["rows"] for p in ordered), "data": info["data"],
                        "width": int(info["bits"]) if info.get("bits") else int(info["shape"][1])}
    config = {key: value for key, value in first.config.items() if key != "shard"}
    devices = sorted({str(p.config.get("device")) for p in ordered})
    config["device"] = devices[0] if len(devices) == 1 else _device_type(devices[0])
    extractions = [p.extraction() for p in ordered]
    seconds = round(sum(float(e.get("seconds", 0.0)) for e in extractions), 3)
    images = sum(int(e.get("images", 0)) for e in extractions)
    extraction = {"seconds": seconds, "images": images, "images_per_second": round(images / max(seconds, 1e-9), 2),
                  "skipped": skipped}
    versions = dict(first.header.get("versions", {}))
    version_differences = sorted({f"{key} {versions.get(key)} ({first.path}) vs {p.header.get('versions', {}).get(key)} "
                                  f"({p.path})" for p in ordered[1:]
                                  for key in set(versions) | set(p.header.get("versions", {}))
                                  if versions.get(key) != p.header.get("versions", {}).get(key)})
    return MergePlan(ordered, first.header["kind"], list(first.summary["class_names"]), splits, config, extraction,
                     versions, version_differences)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when two paths name one file (existing or not)."""
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))

