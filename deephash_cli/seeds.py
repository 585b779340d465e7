"""``--seeds``: one training run per seed, each into its own sibling outputs.

``train-triplet``, ``train-hash`` and ``finetune`` take ``--seeds 0,1,2`` instead of ``--seed S``.
Every output path gets ``.seed<S>`` before its extension, the compound ``.model.h5`` counting as
one so that chained defaults keep working (``encode`` strips ``.model.h5``)::

    -o hash48.model.h5      ->  hash48.seed0.model.h5, hash48.seed1.model.h5, ...
    -o emb.h5               ->  emb.seed0.h5, emb.seed1.h5, ...
    --save-model emb.model.h5 -> emb.seed0.model.h5, ...

Each seed's run is the stage run with ``--seed S`` and those outputs, nothing carried over from
the previous seed (the stages seed every generator they use from ``--seed``), and its artifacts
record that single-seed command, so each one reruns on its own. ``deephash report`` groups
artifacts that differ only in the seed and shows mean ± std.

Why options on the training commands and not a ``deephash sweep`` wrapper: the seed is an option
of exactly these three stages, with the same meaning in each; a wrapper would have to re-parse
another command's options (or spawn processes, paying torch's import per seed) to find ``--seed``
and the outputs to rename, and `--help` of each stage documents ``--seeds`` where ``--seed`` is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from deephash_cli import artifacts
from deephash_cli.errors import DeephashError

COMPOUND_SUFFIXES = (".model.h5", ".model.hdf5")


def seed_path(path: str | os.PathLike[str], seed: int) -> Path:
    """``path`` with ``.seed<seed>`` before its extension (``.model.h5`` counts as one): ``hash.model.h5`` ->
    ``hash.seed0.model.h5``, ``emb.h5`` -> ``emb.seed0.h5``, ``out`` -> ``out.seed0``."""
    path = Path(path)
    name = path.name
    suffix = next((s for s in COMPOUND_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)
    if suffix is None:
        suffix = path.suffix if path.stem else ""
    stem = name[:len(name) - len(suffix)] if suffix else name
    return path.with_name(f"{stem}.seed{seed}{suffix}")


def plan(outputs: Mapping[str, Path | None], seeds: Sequence[int], force: bool) -> list[dict[str, Path | None]]:
    """The outputs of each seed's run (``{option: path}``, None entries stay None), every one checked before
    any run starts: not a stream, writable (``artifacts.check_output``) and no two runs sharing a file."""
    for option, path in outputs.items():
        if path is not None and str(path) == "-":
            raise DeephashError(f"{option} - cannot carry one artifact per seed; give a file name (--seeds writes "
                                f"<name>.seed<S>.h5 for each seed)")
    runs = [{option: None if path is None else seed_path(path, seed) for option, path in outputs.items()}
            for seed in seeds]
    artifacts.check_outputs_differ({f"{option} (seed {seed})": path for seed, run in zip(seeds, runs)
                                    for option, path in run.items()})
    for run in runs:
        for path in run.values():
            if path is not None:
                artifacts.check_output(path, force)
    return runs
