"""Comma-separated option values, parsed at the command-line boundary: one list type for every comma option.

Each option is a :class:`CommaList` naming the option, the ``--help`` metavar, what each item must be and the
converter that turns an item into its value (raising ValueError for an item that is not one). The library
receives the parsed lists; no library function splits a comma string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from deephash_cli.artifacts import SPLITS
from deephash_cli.errors import DeephashError


@dataclass(frozen=True)
class CommaList:
    """A comma-separated option value: ``parse('0.1,0.5')`` -> ``[convert('0.1'), convert('0.5')]``.

    An empty item ('0,,1', a stray comma), an item ``convert`` refuses (ValueError: unparseable or out of
    range), a repeated item (when ``distinct``), an item not above the one before it (when ``increasing``)
    and a count not in ``sizes`` (when given) are each a one-line DeephashError naming the option, the value
    and what each ``item`` must be. ``empty_is_none``: the empty string is the empty list (an option whose
    default is no value at all) instead of an empty item.
    """

    option: str
    metavar: str
    item: str
    convert: Callable[[str], Any]
    distinct: bool = True
    increasing: bool = False
    sizes: tuple[int, ...] = ()
    empty_is_none: bool = False

    def expected(self) -> str:
        return f"expected comma-separated values, each {self.item}"

    def parse(self, text: str) -> list[Any]:
        if self.empty_is_none and not text.strip():
            return []
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise DeephashError(f"{self.option} '{text}': an empty item; {self.expected()}")
        values: list[Any] = []
        for part in parts:
            try:
                value = self.convert(part)
            except ValueError:
                raise DeephashError(f"{self.option} '{text}': '{part}' is not {self.item}") from None
            if self.distinct and value in values:
                raise DeephashError(f"{self.option} '{text}': {part} is given twice")
            if self.increasing and values and not value > values[-1]:
                raise DeephashError(f"{self.option} '{text}': {part} comes after {values[-1]}; expected increasing "
                                    f"values, each {self.item}")
            values.append(value)
        if self.sizes and len(values) not in self.sizes:
            counts = " or ".join(map(str, self.sizes))
            raise DeephashError(f"{self.option} '{text}': {len(values)} values; expected {counts} comma-separated "
                                f"values ({self.metavar}), each {self.item}")
        return values


def _integer(low: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value

    return convert


def _number(positive: bool) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or (positive and not value > 0):
            raise ValueError(text)
        return value

    return convert


def _choice(names: Sequence[str]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in names:
            raise ValueError(text)
        return text

    return convert


SEEDS = CommaList("--seeds", "S,S,...", "an integer seed ≥ 0 (e.g. --seeds 0,1,2)", _integer(0))
MARGINS = CommaList("--margin", "M,M,...", "a number > 0", _number(positive=True))
LR_MILESTONES = CommaList("--lr-milestones", "E,E,...", "an epoch ≥ 1", _integer(1), increasing=True,
                          empty_is_none=True)
MEAN = CommaList("--mean", "R,G,B", "a number", _number(positive=False),
                 distinct=False, sizes=(1, 3))
STD = CommaList("--std", "R,G,B", "a number > 0", _number(positive=True),
                distinct=False, sizes=(1, 3))
SPLIT_NAMES = ", ".join(SPLITS)
DATABASE_SPLITS = CommaList("--database-split", "SPLIT,SPLIT,...", f"a split name ({SPLIT_NAMES})", _choice(SPLITS))
INDEX_SPLITS = CommaList("--splits", "SPLIT,SPLIT,...", f"a split name ({SPLIT_NAMES})", _choice(SPLITS))
METRIC_NAMES = "map, map@K, precision@K, knn, recall@K, map@r, nmi"
# --metric has its own grammar on top of the items (a bare number repeats the metric before it; repeats are
# dropped), so its items are only split and checked for emptiness here.
METRICS = CommaList("--metric", "METRIC,METRIC,...", f"a metric ({METRIC_NAMES})", str, distinct=False)


def channels(spec: CommaList, text: str) -> tuple[float, float, float]:
    """--mean/--std: 'R,G,B' -> (R, G, B); a single value is used for all three channels."""
    values = spec.parse(text)
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])
