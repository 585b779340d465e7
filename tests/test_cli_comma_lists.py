"""Comma-separated options: one list type (deephash_cli.options), parsed before any work, one `error:` line each.

--seeds' errors are in test_seeds.py; here every other comma option (empty item, bad item, out of range,
repeats where they mean nothing), their --help metavars, and properties of the splitter itself.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deephash_cli import options
from deephash_cli.artifacts import SPLITS
from deephash_cli.cli import app
from deephash_cli.errors import DeephashError
from tests.conftest import invoke

MARGIN_ITEM = "expected comma-separated values, each a number > 0"
SPLIT_ITEM = "a split name (train, val, test, query, gallery)"
METRIC_ITEM = "a metric (map, map@K, precision@K, knn, recall@K, map@r, nmi)"


@pytest.mark.parametrize("args, error", [
    # train-triplet --margin: the margins to search
    (["train-triplet", "{f}", "--margin", "0.2,,1.0"], f"--margin '0.2,,1.0': an empty item; {MARGIN_ITEM}"),
    (["train-triplet", "{f}", "--margin", "0.2,1.0,"], f"--margin '0.2,1.0,': an empty item; {MARGIN_ITEM}"),
    (["train-triplet", "{f}", "--margin", "0.2,x"], "--margin '0.2,x': 'x' is not a number > 0"),
    (["train-triplet", "{f}", "--margin", "0.2,-1"], "--margin '0.2,-1': '-1' is not a number > 0"),
    (["train-triplet", "{f}", "--margin", "0.2,nan"], "--margin '0.2,nan': 'nan' is not a number > 0"),
    (["train-triplet", "{f}", "--margin", "0.2,0.20"], "--margin '0.2,0.20': 0.20 is given twice"),
    # finetune --margin: the same items, one value
    (["finetune", "--margin", "0.2,"], f"--margin '0.2,': an empty item; {MARGIN_ITEM}"),
    (["finetune", "--margin", "a"], "--margin 'a': 'a' is not a number > 0"),
    (["finetune", "--margin", "0"], "--margin '0': '0' is not a number > 0"),
    (["finetune", "--margin", "0.1,0.2"], "--margin '0.1,0.2': fine-tuning trains one model, give one margin; "
                                          "choose it with train-triplet's margin search on extracted features"),
    # --lr-milestones (train-triplet, train-hash, finetune): increasing epochs ≥ 1
    (["train-hash", "{f}", "--lr-milestones", "6,,9"], "--lr-milestones '6,,9': an empty item; expected "
                                                       "comma-separated values, each an epoch ≥ 1"),
    (["train-hash", "{f}", "--lr-milestones", "6,9.5"], "--lr-milestones '6,9.5': '9.5' is not an epoch ≥ 1"),
    (["train-hash", "{f}", "--lr-milestones", "0,6"], "--lr-milestones '0,6': '0' is not an epoch ≥ 1"),
    (["train-hash", "{f}", "--lr-milestones", "9,6"], "--lr-milestones '9,6': 6 comes after 9; expected increasing "
                                                      "values, each an epoch ≥ 1"),
    (["train-triplet", "{f}", "--lr-milestones", "6,6"], "--lr-milestones '6,6': 6 is given twice"),
    (["finetune", "--lr-milestones", ",4"], "--lr-milestones ',4': an empty item; expected comma-separated values, "
                                            "each an epoch ≥ 1"),
    # --mean / --std (extract, finetune): R,G,B or one value for all three; repeats are fine
    (["extract", "--mean", "0.5,,0.5"], "--mean '0.5,,0.5': an empty item; expected comma-separated values, each "
                                        "a number"),
    (["extract", "--mean", "0.5,a,0.5"], "--mean '0.5,a,0.5': 'a' is not a number"),
    (["extract", "--mean", "0.5,inf,0.5"], "--mean '0.5,inf,0.5': 'inf' is not a number"),
    (["extract", "--mean", "0.5,0.5"], "--mean '0.5,0.5': 2 values; expected 1 or 3 comma-separated values "
                                       "(R,G,B), each a number"),
    (["extract", "--std", "0.5,0.5,"], "--std '0.5,0.5,': an empty item; expected comma-separated values, each a "
                                       "number > 0"),
    (["extract", "--std", "0.5,0,0.5"], "--std '0.5,0,0.5': '0' is not a number > 0"),
    (["finetune", "--std", "-1"], "--std '-1': '-1' is not a number > 0"),
    (["finetune", "--mean", "0.1,0.2,0.3,0.4"], "--mean '0.1,0.2,0.3,0.4': 4 values; expected 1 or 3 "
                                                "comma-separated values (R,G,B), each a number"),
    # evaluate --database-split
    (["evaluate", "{f}", "--database-split", "train,,val"], f"--database-split 'train,,val': an empty item; "
                                                            f"expected comma-separated values, each {SPLIT_ITEM}"),
    (["evaluate", "{f}", "--database-split", "train,foo"], f"--database-split 'train,foo': 'foo' is not "
                                                           f"{SPLIT_ITEM}"),
    (["evaluate", "{f}", "--database-split", "train,train"], "--database-split 'train,train': train is given twice"),
    # evaluate --metric: its own grammar over the shared items
    (["evaluate", "{f}", "--metric", "map,,knn"], f"--metric 'map,,knn': an empty item; expected comma-separated "
                                                  f"values, each {METRIC_ITEM}"),
    (["evaluate", "{f}", "--metric", "recall@1,2,"], f"--metric 'recall@1,2,': an empty item; expected "
                                                     f"comma-separated values, each {METRIC_ITEM}"),
    (["evaluate", "{f}", "--metric", "map,ndcg"], "--metric 'map,ndcg': unknown metric 'ndcg'; valid names: map, "
                                                  "map@K, precision@K, knn, recall@K, map@r, nmi (a bare number "
                                                  "after recall@K, map@K or precision@K adds another K)"),
    (["evaluate", "{f}", "--metric", "recall@1,0"], "--metric 'recall@1,0': metric 'recall@0': K must be a "
                                                    "positive integer"),
    # index --splits
    (["index", "{f}", "--splits", "train,"], f"--splits 'train,': an empty item; expected comma-separated values, "
                                             f"each {SPLIT_ITEM}"),
    (["index", "{f}", "--splits", "train,all"], f"--splits 'train,all': 'all' is not {SPLIT_ITEM}"),
    (["index", "{f}", "--splits", "test,test"], "--splits 'test,test': test is given twice"),
])
def test_a_bad_comma_option_is_one_error_line_before_any_work(runner, tmp_path, features_file, args, error):
    out = tmp_path / "out.h5"
    result = invoke(runner, *[a.format(f=features_file) for a in args],
                    *(["-o", out] if args[0] != "evaluate" else []))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {error}"]
    assert not out.exists() and result.stdout == ""


def test_accepted_values_keep_their_meaning(runner, tmp_path, features_file):
    """Spaces around items, a metric repeated, one --mean value for three channels and no --lr-milestones at all
    are accepted as before; the evaluation records the parsed database splits."""
    result = invoke(runner, "evaluate", features_file, "--metric", "map, knn,map", "--database-split", " train ",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metrics"] == ["map", "knn"] and data["setting"]["database_split"] == "train"
    assert options.channels(options.MEAN, "0.5") == (0.5, 0.5, 0.5)
    assert options.channels(options.STD, "0.5,0.5,0.5") == (0.5, 0.5, 0.5)
    assert options.LR_MILESTONES.parse("") == [] and options.LR_MILESTONES.parse("2, 4") == [2, 4]


@pytest.mark.parametrize("command, metavars", [
    ("train-triplet", ["M,M,...", "E,E,...", "S,S,..."]),
    ("extract", ["R,G,B"]),
    ("finetune", ["R,G,B", "E,E,..."]),
    ("evaluate", ["METRIC,METRIC,...", "SPLIT,SPLIT,..."]),
    ("index", ["SPLIT,SPLIT,..."]),
])
def test_help_shows_the_format_of_each_comma_option(runner, command, metavars):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert all(metavar in result.stdout for metavar in metavars), result.stdout


# --------------------------------------------------------------------------- the splitter's properties

# Each option's list type with a strategy of its valid values (distinct; increasing where it must be).
VALID = [
    (options.SEEDS, st.lists(st.integers(0, 10**6), unique=True, min_size=1, max_size=8)),
    (options.MARGINS, st.lists(st.floats(1e-6, 1e6), unique=True, min_size=1, max_size=8)),
    (options.LR_MILESTONES, st.lists(st.integers(1, 1000), unique=True, min_size=1, max_size=8).map(sorted)),
    (options.INDEX_SPLITS, st.lists(st.sampled_from(SPLITS), unique=True, min_size=1)),
    (options.MEAN, st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3)),
]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), spec_index=st.integers(0, len(VALID) - 1), pad=st.sampled_from(["", " ", "  "]))
def test_any_valid_list_joined_by_commas_parses_back_to_itself(data, spec_index, pad):
    spec, values = VALID[spec_index][0], data.draw(VALID[spec_index][1])
    text = ",".join(f"{pad}{value!r}{pad}" if not isinstance(value, str) else f"{pad}{value}{pad}"
                    for value in values)
    assert spec.parse(text) == values


@settings(max_examples=300, deadline=None)
@given(spec=st.sampled_from([options.SEEDS, options.MARGINS, options.LR_MILESTONES, options.MEAN, options.STD,
                             options.DATABASE_SPLITS, options.INDEX_SPLITS, options.METRICS]),
       items=st.lists(st.text(alphabet="0123456789.,-abtrain @", max_size=6), min_size=1, max_size=6),
       blank=st.sampled_from(["", " ", "\t"]), where=st.integers(0, 6))
def test_any_value_with_an_empty_item_is_refused(spec, items, blank, where):
    parts = [item for text in items for item in text.split(",")]
    parts.insert(min(where, len(parts)), blank)
    text = ",".join(parts)
    if spec.empty_is_none and not text.strip():
        assert spec.parse(text) == []  # --lr-milestones '' is its default: no schedule
        return
    with pytest.raises(DeephashError) as refused:
        spec.parse(text)
    assert str(refused.value) == f"{spec.option} '{text}': an empty item; {spec.expected()}"
