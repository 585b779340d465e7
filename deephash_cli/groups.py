"""Runs that differ only in their seed, taken together: the grouping key and mean ± std.

Two artifacts are runs of one experiment when their configs are equal once these are removed:

- the seed of the run that made the artifact: ``seed`` of a training stage's config (and its copy in
  finetune's ``fingerprint``); for ``encode`` and ``extract --model`` the seed of the model's
  training (``model_config``). Other seeds stay part of the key: those of the inputs' configs
  (``source``: a different upstream seed is a different input), test split seeds (``split_seed``,
  finetune's ``split``) and the evaluation's own settings (the pooled protocol's query seed);
- provenance that names the run's own files: ``model`` and ``model_sha256`` (each seed has its own
  model file);
- outcomes of the run, which differ from seed to seed by nature: validation scores, chosen margin
  and epoch, epochs done, seconds (``OUTCOMES``).

Output file names, creation times and the recorded command are attributes, not config, so they
never enter the key. ``summarize`` gives the mean, the sample standard deviation (ddof = 1) and
n; a group of one has no standard deviation. ``group`` puts members in one order (``report``: by
file name) before any sum, so the numbers do not depend on the order files were found in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

TRAINING_STAGES = ("train-triplet", "train-hash", "finetune")
PROVENANCE = ("model", "model_sha256")
OUTCOMES = ("best_val_map", "best_epoch", "seconds_per_epoch", "margin_search", "chosen_margin", "epochs_done",
            "stopped_early", "resumed_from")


@dataclass(frozen=True)
class Summary:
    """mean, sample standard deviation (None for n = 1) and the number of values."""

    mean: float
    std: float | None
    n: int


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean and sample standard deviation (ddof = 1) of ``values`` in the order given; None when empty."""
    if not values:
        return None
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Summary(mean, std, n)


def seed_of(config: Mapping[str, Any]) -> int | None:
    """The seed of the training run behind an artifact: a training stage's ``seed``, else its model's."""
    if config.get("stage") in TRAINING_STAGES:
        seed = config.get("seed")
        return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None
    model_config = config.get("model_config")
    return seed_of(model_config) if isinstance(model_config, Mapping) else None


def _without_seed(config: Mapping[str, Any]) -> dict[str, Any]:
    """A training config without its ``seed`` (and finetune's copy of it in ``fingerprint``)."""
    kept = {key: value for key, value in config.items() if key != "seed"}
    if isinstance(kept.get("fingerprint"), Mapping):
        kept["fingerprint"] = {key: value for key, value in kept["fingerprint"].items() if key != "seed"}
    return kept


def experiment(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without the run's seed, its own files and its outcomes: equal for runs of one experiment."""
    kept = {key: value for key, value in config.items() if key not in PROVENANCE + OUTCOMES}
    if config.get("stage") in TRAINING_STAGES:
        kept = _without_seed(kept)
    if isinstance(kept.get("model_config"), Mapping):
        kept["model_config"] = experiment(kept["model_config"])
    return kept


def group_key(config: Mapping[str, Any], *extra: Any) -> str:
    """A canonical string of ``experiment(config)`` and ``extra`` (e.g. kind and evaluation setting)."""
    return json.dumps([experiment(config), *extra], sort_keys=True, default=str)


def group(items: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], str],
          order: Callable[[Mapping[str, Any]], Any]) -> list[list[Mapping[str, Any]]]:
    """``items`` split by ``key``; members sorted by ``order``, groups by their first member's ``order``: the
    result does not depend on the order of ``items``."""
    buckets: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        buckets.setdefault(key(item), []).append(item)
    groups = [sorted(members, key=order) for members in buckets.values()]
    return sorted(groups, key=lambda members: order(members[0]))
