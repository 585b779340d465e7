"""--seeds on the training stages and report's seed groups (mean ± std): issue #16."""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deephash_cli.artifacts import read_header
from deephash_cli.groups import experiment, seed_of, summarize
from deephash_cli.records import read_records
from deephash_cli.report import group_rows, map_vs_bits_series
from deephash_cli.seeds import seed_path
from tests.conftest import assert_bitwise_equal, datasets, invoke, without_timing

FAST = ["--epochs", "2", "--hidden", "16", "--device", "cpu"]
HASH = ["--bits", "8", *FAST]
TRIPLET = ["--margin", "0.2", "--dim", "8", "--miner", "semihard", "--classes-per-batch", "4",
           "--samples-per-class", "5", *FAST]
# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize("name, seed, expected", [
    ("hash48.model.h5", 0, "hash48.seed0.model.h5"),
    ("emb.h5", 2, "emb.seed2.h5"),
    ("digits.triplet-facenet.h5", 1, "digits.triplet-facenet.seed1.h5"),
    ("run.model.hdf5", 3, "run.seed3.model.hdf5"),
    ("out", 0, "out.seed0"),
    (".model.h5", 0, ".model.seed0.h5"),
])
def test_seed_paths_put_the_seed_before_the_extension(tmp_path, name, seed, expected):
    assert seed_path(tmp_path / name, seed) == tmp_path / expected


# --------------------------------------------------------------------------- --seeds


def test_train_hash_seeds_equal_separate_seed_runs(runner, tmp_path, features_file):
    out = tmp_path / "h.model.h5"
    result = invoke(runner, "train-hash", features_file, "-o", out, "--seeds", "0,1", *HASH)
    assert result.exit_code == 0, result.output
    seeded = [tmp_path / "h.seed0.model.h5", tmp_path / "h.seed1.model.h5"]
    assert result.stdout.splitlines() == [str(p) for p in seeded] and not out.exists()
    assert "seed 0: best val mAP" in result.stderr and "seed 1: best val mAP" in result.stderr
    for seed, path in enumerate(seeded):
        alone = tmp_path / f"alone{seed}.model.h5"
        assert invoke(runner, "train-hash", features_file, "-o", alone, "--seed", str(seed), *HASH).exit_code == 0
        assert assert_bitwise_equal(path, alone) > 10
        assert without_timing(read_header(path)["config"]) == without_timing(read_header(alone)["config"])
        assert read_header(path)["config"]["seed"] == seed
    assert datasets(seeded[0])["model/parameters/net.0.weight"].tobytes() != \
        datasets(seeded[1])["model/parameters/net.0.weight"].tobytes()  # the seed does change the run


def test_each_seed_records_the_single_seed_command_that_remakes_it(runner, tmp_path, features_file):
    out = tmp_path / "h.model.h5"
    assert invoke(runner, "train-hash", features_file, "-o", out, "--seeds", "3,1", *HASH).exit_code == 0
    path = tmp_path / "h.seed1.model.h5"
    command = read_header(path)["command"]
    assert command == shlex.join(["deephash", "train-hash", str(features_file), "--output", str(path), "--bits",
                                  "8", "--hidden", "16", "--epochs", "2", "--seed", "1", "--device", "cpu"])
    kept = tmp_path / "kept.h5"
    path.rename(kept)
    words = shlex.split(command)
    assert invoke(runner, *words[1:]).exit_code == 0
    assert assert_bitwise_equal(path, kept) > 10


def test_train_triplet_seeds_name_both_outputs(runner, tmp_path, features_file):
    emb, model = tmp_path / "e.h5", tmp_path / "e.model.h5"
    result = invoke(runner, "train-triplet", features_file, "-o", emb, "--save-model", model, "--seeds", "2,5",
                    *TRIPLET)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(tmp_path / "e.seed2.h5"), str(tmp_path / "e.seed5.h5")]
    assert read_header(tmp_path / "e.seed5.h5")["config"]["model"] == str(tmp_path / "e.seed5.model.h5")
    alone_emb, alone_model = tmp_path / "a.h5", tmp_path / "a.model.h5"
    assert invoke(runner, "train-triplet", features_file, "-o", alone_emb, "--save-model", alone_model, "--seed",
                  "5", *TRIPLET).exit_code == 0
    assert assert_bitwise_equal(tmp_path / "e.seed5.h5", alone_emb) > 5
    assert assert_bitwise_equal(tmp_path / "e.seed5.model.h5", alone_model) > 5
    assert "--save-model" in read_header(tmp_path / "e.seed2.model.h5")["command"]


@pytest.mark.parametrize("args, message", [
    (["--seed", "1", "--seeds", "0,1"], "--seed and --seeds exclude each other"),
    (["--seeds", "0,,1"], "--seeds '0,,1': an empty item"),
    (["--seeds", "0,1,"], "--seeds '0,1,': an empty item"),
    (["--seeds", "a"], "--seeds 'a': 'a' is not an integer seed ≥ 0"),
    (["--seeds", "0,1.5"], "'1.5' is not an integer seed ≥ 0"),
    (["--seeds", "-1"], "'-1' is not an integer seed ≥ 0"),
    (["--seeds", "0,1,0"], "--seeds '0,1,0': 0 is given twice"),
    (["--seeds", "0,1", "-o", "-"], "--output - cannot carry one artifact per seed"),
])
@pytest.mark.parametrize("stage", ["train-hash", "train-triplet"])
def test_seeds_errors_are_one_line(runner, tmp_path, features_file, stage, args, message):
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "x.h5")]
    result = invoke(runner, stage, features_file, *args, *FAST)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5"]


def test_every_seeds_output_is_checked_before_the_first_run(runner, tmp_path, features_file):
    (tmp_path / "h.seed1.model.h5").write_text("mine")
    result = invoke(runner, "train-hash", features_file, "-o", tmp_path / "h.model.h5", "--seeds", "0,1", *HASH)
    assert result.exit_code == 2 and "h.seed1.model.h5 exists; pass --force" in result.stderr
    assert not (tmp_path / "h.seed0.model.h5").exists()


@pytest.mark.parametrize("stage", ["train-hash", "train-triplet"])
def test_help_shows_seeds(runner, stage):
    text = invoke(runner, stage, "--help").stdout
    assert "--seeds" in text and "S,S,..." in text


# --------------------------------------------------------------------------- mean ± std and groups

FLOATS = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@given(st.lists(FLOATS, min_size=1, max_size=12))
def test_mean_and_sample_std_match_the_naive_computation(values):
    summary = summarize(values)
    mean = sum(values) / len(values)
    assert summary.n == len(values) and math.isclose(summary.mean, mean, rel_tol=1e-12, abs_tol=1e-9)
    if len(values) == 1:
        assert summary.std is None
    else:
        naive = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert math.isclose(summary.std, naive, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(summary.std, float(np.std(values, ddof=1)), rel_tol=1e-9, abs_tol=1e-9)


def test_summary_of_known_values():
    summary = summarize([0.70, 0.72, 0.74])
    assert math.isclose(summary.mean, 0.72) and math.isclose(summary.std, 0.02) and summary.n == 3
    assert summarize([]) is None


def _row(file, key, seed, value):
    return {"file": file, "key": key, "seed": seed, "evaluation": "splits/hamming", "kind": "codes",
            "dataset": "d", "backbone": "b", "stage": "encode", "method": "m", "bits": 8, "current": True,
            "seconds_unit": "s/epoch", "threads": "1", "map": value, "knn": value / 2, "p100": None,
            "seconds": 1.0 + seed, "val_map": value / 3}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 4), FLOATS.map(abs)), min_size=1, max_size=12,
                unique_by=lambda item: (item[0], item[1])), st.randoms(use_true_random=False))
def test_groups_do_not_depend_on_the_order_of_the_artifacts(runs, random):
    rows = [_row(f"{key}.seed{seed}.h5", key, seed, value) for key, seed, value in runs]
    shuffled = list(rows)
    random.shuffle(shuffled)
    first, second = group_rows(rows), group_rows(shuffled)
    assert first == second
    assert sorted(len(g["members"]) for g in first) == sorted(
        sum(1 for key, _, _ in runs if key == k) for k in {key for key, _, _ in runs})
    for found in first:
        values = [m["map"] for m in found["members"]]
        assert found["map"] == summarize(values) and found["n"] == len(values)
        assert {m["key"] for m in found["members"]} == {found["members"][0]["key"]}


def test_the_experiment_leaves_out_the_seed_the_runs_own_files_and_outcomes_but_not_upstream_seeds():
    source = {"stage": "train-triplet", "seed": 7, "loss": "facenet"}
    hash_config = {"stage": "train-hash", "seed": 1, "bits": 8, "best_val_map": 0.5, "seconds_per_epoch": 2.0,
                   "best_epoch": 3, "source": source, "input": {"dim": 8}}
    other_seed = {**hash_config, "seed": 2, "best_val_map": 0.6, "best_epoch": 1}
    assert experiment(hash_config) == experiment(other_seed)
    assert experiment(hash_config)["source"] == source  # an upstream seed is another input
    assert experiment(hash_config) != experiment({**hash_config, "source": {**source, "seed": 8}})
    assert experiment(hash_config) != experiment({**hash_config, "bits": 16})
    encode = {"stage": "encode", "model": "h.seed1.model.h5", "model_sha256": "x", "model_config": hash_config}
    assert experiment(encode) == experiment({**encode, "model": "h.seed2.model.h5", "model_sha256": "y",
                                             "model_config": other_seed})
    finetune = {"stage": "finetune", "seed": 1, "fingerprint": {"seed": 1, "lr": 0.1},
                "split": {"test_split": "stratified", "seed": 0}}
    assert experiment(finetune) == experiment({**finetune, "seed": 2, "fingerprint": {"seed": 2, "lr": 0.1}})
    assert experiment(finetune) != experiment({**finetune, "split": {"test_split": "stratified", "seed": 3}})
    assert seed_of(hash_config) == 1 and seed_of(encode) == 1 and seed_of({"stage": "extract", "seed": 0}) is None


def test_map_vs_bits_draws_the_experiment_best_on_validation_never_on_test():
    def group(file, test, validation, stage="encode"):
        return {"kind": "codes", "stage": stage, "bits": 48, "method": "triplet-ranking + all", "current": True,
                "dataset": "d", "backbone": "b", "evaluation": "splits/hamming", "members": [{"file": file}],
                "map": summarize(test), "val_map": summarize(validation) if validation else None}

    rows = [group("a.h5", [0.5, 0.52], [0.9, 0.92]), group("b.h5", [0.7, 0.72], [0.8, 0.82]),
            group("c.h5", [0.99], None)]
    (label, (bits, means, errors)), = map_vs_bits_series(rows).items()
    assert label == "triplet-ranking (n=2)" and bits == [48]
    assert means == [pytest.approx(0.51)] and errors == [pytest.approx(float(np.std([0.5, 0.52], ddof=1)))]
    # No validation score anywhere: the first file, whatever its test mAP.
    (_, (_, means, errors)), = map_vs_bits_series([group("z.h5", [0.9], None), group("y.h5", [0.1], None)]).items()
    assert means == [0.1] and math.isnan(errors[0])


# --------------------------------------------------------------------------- report end to end


def test_report_shows_seed_groups_as_mean_and_std(runner, tmp_path, features_file):
    folder = tmp_path / "runs"
    folder.mkdir()
    features = features_file.rename(folder / "f.h5")
    assert invoke(runner, "train-hash", features, "-o", folder / "h.model.h5", "--seeds", "0,1", *HASH).exit_code == 0
    assert invoke(runner, "train-hash", features, "-o", folder / "g.model.h5", "--bits", "16", *FAST).exit_code == 0
    maps = []
    for name in ("h.seed0", "h.seed1", "g"):
        codes = folder / f"{name}.codes.h5"
        assert invoke(runner, "encode", features, "--model", folder / f"{name}.model.h5", "-o", codes).exit_code == 0
        maps.append(json.loads(invoke(runner, "evaluate", codes, "--json", "--record").stdout)["map"])
    result = invoke(runner, "report", folder)
    assert result.exit_code == 0, result.output
    text = (folder / "report.md").read_text()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("| ") and "`" in line]
    by_file = {row[-1]: row for row in rows}
    # columns: # dataset backbone stage method bits seed mAP bounds kNN P@100 evaluation threads seconds file
    grouped = by_file["`h.seed0.codes.h5`, `h.seed1.codes.h5`"]
    assert grouped[6] == "n=2: 0, 1"
    assert grouped[7] == f"{np.mean(maps[:2]):.4f} ± {np.std(maps[:2], ddof=1):.4f}"
    knn = [read_records(folder / f"h.seed{s}.codes.h5")[0]["knn_accuracy"] for s in (0, 1)]
    assert grouped[9] == f"{np.mean(knn):.4f} ± {np.std(knn, ddof=1):.4f}"
    assert grouped[12] == str(torch.get_num_threads())
    assert " ± " in by_file["`h.seed0.model.h5`, `h.seed1.model.h5`"][13]  # seconds per epoch too
    single = by_file["`g.codes.h5`"]
    assert single[6] == "0" and single[7] == f"{maps[2]:.4f}" and "±" not in "".join(single)
    assert "n=" not in "".join(single)
    assert (folder / "report.map-vs-bits.png").exists()
    for seed in (0, 1):  # every member's command is listed
        assert f"`h.seed{seed}.codes.h5` made by" in text


def test_info_shows_the_folder_the_command_ran_in(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke(runner, "extract", "--dataset", "digits", "--limit-per-class", "3", "-o", "f.h5").exit_code == 0
    assert json.loads(invoke(runner, "info", "f.h5", "--json").stdout)["cwd"] == str(tmp_path)
    assert f"  cwd       {tmp_path}  (the command's relative paths start here)" in invoke(runner, "info", "f.h5").stdout


@pytest.mark.parametrize("name, argv", [
    ("finetune", ["--no-freeze-bn", "--amp", "--resume", "--seeds", "0,1", "-o", "a b.model.h5", "--margin", "0.3",
                  "--init", "x.h5", "--lr-milestones", "2,4"]),
    ("train-triplet", ["f.h5", "--seeds=0,1", "-o", "e.h5", "--save-model", "e.model.h5", "--force", "--lr", "1e-05"]),
])
def test_the_single_seed_command_parses_back_to_the_same_options(name, argv):
    from pathlib import Path

    import typer.main

    from deephash_cli.cli import _command_with, app

    command = typer.main.get_command(app).commands[name]
    original = command.make_context(name, list(argv))
    changes = {"seeds": None, "seed": 1, "output": Path("out dir/o.seed1.h5")}
    words = shlex.split(_command_with(original, changes))
    assert words[:2] == ["deephash", name] and "--seeds" not in " ".join(words)
    again = command.make_context(name, words[2:])
    assert again.params == {**original.params, "seeds": None, "seed": 1, "output": Path("out dir/o.seed1.h5")}
