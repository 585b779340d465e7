"""`deephash info`, `evaluate --record` and `deephash report`: provenance checks, sidecars, the markdown table."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from deephash_cli.artifacts import read_artifact, sha256_file
from deephash_cli.records import read_records, sidecar_path
from tests.conftest import invoke, write_features

FAST = ["--epochs", "2", "--hidden", "16", "--device", "cpu"]
MINED = ["--miner", "semihard", "--classes-per-batch", "4", "--samples-per-class", "5"]


def _chain(runner, folder):
    """features -> embeddings (semihard miner) -> hash model -> codes, all in ``folder``."""
    features = write_features(folder / "f.h5")
    emb, model, codes = folder / "emb.h5", folder / "h.model.h5", folder / "codes.h5"
    assert invoke(runner, "train-triplet", features, "-o", emb, "--margin", "0.2", "--dim", "8", *MINED,
                  *FAST).exit_code == 0
    assert invoke(runner, "train-hash", features, "-o", model, "--bits", "8", *FAST).exit_code == 0
    assert invoke(runner, "encode", features, "--model", model, "-o", codes).exit_code == 0
    return features, emb, model, codes


# --------------------------------------------------------------------------- info


def test_info_json_describes_codes_and_checks_the_chain(runner, tmp_path):
    features, _, model, codes = _chain(runner, tmp_path)
    result = invoke(runner, "info", codes, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["kind"], info["format_version"]) == ("codes", 2)
    assert info["splits"]["test"] == {"rows": 40, "data": "codes", "shape": [40, 1], "dtype": "uint8", "bits": 8}
    assert info["splits"]["train"]["rows"] + info["splits"]["val"]["rows"] == 160
    assert info["class_names"] == ["class0", "class1", "class2", "class3"]
    keys = info["key_config"]
    assert (keys["stage"], keys["dataset"], keys["backbone"], keys["bits"]) == ("encode", "blobs", "synthetic", 8)
    assert keys["method"] == "triplet-ranking + random"
    assert keys["best_val_map"] == read_artifact(model).config["best_val_map"]
    assert info["sha256"] == sha256_file(codes)
    parent, dataset = info["provenance"]
    assert parent["status"] == "ok" and parent["reference"] == str(features) and parent["kind"] == "features"
    assert parent["expected_sha256"] == parent["found_sha256"] == sha256_file(features)
    assert dataset["dataset"] == "blobs" and dataset["backbone"] == "synthetic"
    assert info["model_link"]["status"] == "ok"


def test_info_text_goes_to_stdout_and_reports_changed_and_missing_parents(runner, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    features, emb, _, _ = _chain(runner, folder)
    text = invoke(runner, "info", emb)
    assert text.exit_code == 0 and text.stderr == ""
    assert "embeddings artifact (format_version 2)" in text.stdout
    assert re.search(r"parent\s+ok\s+\S*f\.h5\s+\(features, test\)", text.stdout)
    assert "method         facenet + semihard" in text.stdout and "chosen_margin  0.2" in text.stdout
    features.unlink()
    write_features(features, seed=5)  # same path, other bytes
    changed = json.loads(invoke(runner, "info", emb, "--json").stdout)
    assert changed["provenance"][0]["status"] == "changed"
    assert changed["provenance"][0]["found_sha256"] != changed["provenance"][0]["expected_sha256"]
    features.unlink()
    missing = invoke(runner, "info", emb)
    assert missing.exit_code == 0 and re.search(r"parent\s+missing\s+\S*f\.h5", missing.stdout)


def test_relative_parents_are_stored_relative_to_the_child_and_followed_from_anywhere(runner, tmp_path,
                                                                                     monkeypatch):
    (tmp_path / "work" / "out").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    write_features(tmp_path / "work" / "f.h5")
    assert invoke(runner, "train-hash", "f.h5", "-o", "out/h.model.h5", "--bits", "8", *FAST).exit_code == 0
    assert read_artifact("out/h.model.h5").attrs["parent"] == os.path.join("..", "f.h5")
    monkeypatch.chdir(tmp_path)
    info = json.loads(invoke(runner, "info", "work/out/h.model.h5", "--json").stdout)
    assert info["provenance"][0]["status"] == "ok"
    assert info["provenance"][0]["path"] == os.path.join("work", "f.h5")
    assert info["model"]["out_dim"] == 8 and info["model"]["produces"] == "codes"


def test_info_errors(runner, tmp_path):
    result = invoke(runner, "info", tmp_path / "nope.h5")
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'nope.h5'}: no such file\n"
    (tmp_path / "junk.h5").write_text("junk")
    result = invoke(runner, "info", tmp_path / "junk.h5")
    assert result.exit_code == 2 and "not an HDF5 file" in result.stderr


# --------------------------------------------------------------------------- evaluate --record


def test_record_writes_a_sidecar_and_leaves_the_artifact_untouched(runner, tmp_path, features_file):
    before = sha256_file(features_file)
    plain = json.loads(invoke(runner, "evaluate", features_file, "--json").stdout)
    recorded = json.loads(invoke(runner, "evaluate", features_file, "--json", "--record").stdout)
    assert sha256_file(features_file) == before
    assert recorded["recorded_to"] == str(sidecar_path(features_file))
    assert sidecar_path(features_file).name == "features.h5.evals.json"
    (entry,) = read_records(features_file)
    assert entry["map"] == pytest.approx(plain["map"]) and entry["knn_accuracy"] == plain["knn_accuracy"]
    assert entry["precision_at"]["100"] == pytest.approx(plain["precision_at"]["100"])
    assert entry["artifact_sha256"] == before and "config" not in entry
    assert entry["setting"]["protocol"] == "splits" and entry["setting"]["distance"] == "euclidean"
    assert entry["command"] and entry["recorded"].endswith("Z")
    # Same setting again replaces; another distance adds.
    invoke(runner, "evaluate", features_file, "--record")
    assert len(read_records(features_file)) == 1
    invoke(runner, "evaluate", features_file, "--record", "--distance", "cosine")
    assert [r["setting"]["distance"] for r in read_records(features_file)] == ["euclidean", "cosine"]
    info = json.loads(invoke(runner, "info", features_file, "--json").stdout)
    assert [e["current"] for e in info["evaluations"]] == [True, True]


def test_corrupt_sidecar_is_an_error_for_record(runner, features_file):
    sidecar_path(features_file).write_text("{not json")
    result = invoke(runner, "evaluate", features_file, "--record")
    assert result.exit_code == 2 and "features.h5.evals.json: unreadable evaluation record" in result.stderr


# --------------------------------------------------------------------------- report


def test_report_table_commands_and_figures(runner, tmp_path):
    features, emb, model, codes = _chain(runner, tmp_path)
    results = {}
    for path in (features, emb, codes):
        results[path.name] = json.loads(invoke(runner, "evaluate", path, "--json", "--record").stdout)
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "emb.tsne.png", np.random.default_rng(0).random((8, 8, 3)))
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "report.md") and result.stderr == ""
    text = (tmp_path / "report.md").read_text()
    rows = {line.split("|")[-2].strip(" `"): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| ") and "`" in line}
    assert set(rows) == {"f.h5", "emb.h5", "h.model.h5", "codes.h5"}
    # columns: # dataset backbone stage method bits seed mAP bounds kNN P@100 evaluation threads seconds file
    for name, res in results.items():
        row = rows[name]
        assert row[7] == f"{res['map']:.4f}" and row[9] == f"{res['knn_accuracy']:.4f}"
        assert row[10] == f"{res['precision_at']['100']:.4f}"
        assert row[1:3] == ["blobs", "synthetic"]
        low, high = f"{res['map_pessimistic']:.4f}", f"{res['map_optimistic']:.4f}"
        assert row[8] == ("—" if low == high else f"{low}–{high}")
    assert rows["codes.h5"][8] != "—"  # 8-bit codes of 160 items: ties, so the bounds differ
    assert rows["codes.h5"][3:7] == ["encode", "triplet-ranking + random", "8", "0"]  # the model's seed
    assert rows["emb.h5"][3:5] == ["train-triplet", "facenet + semihard"]
    assert rows["f.h5"][6] == "—"  # not trained: no seed
    history = read_artifact(emb).history
    assert rows["emb.h5"][13] == f"{np.mean([h['seconds'] for h in history]):.2f} s/epoch"
    assert rows["emb.h5"][12] == read_artifact(emb).attrs["versions"]["torch_threads"]
    assert rows["h.model.h5"][7] == "—"
    # Every figure's command: the producing command and the evaluation command.
    assert f"`emb.h5` made by `{read_artifact(emb).attrs['command']}`" in text
    assert f"evaluated by `{read_records(codes)[0]['command']}`" in text
    for name in ("map-vs-bits", "miner-convergence", "tsne-grid"):
        png = tmp_path / f"report.{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in text
    # Never overwritten without --force.
    again = invoke(runner, "report", tmp_path)
    assert again.exit_code == 2 and again.stderr == f"error: {tmp_path / 'report.md'} exists; pass --force to " \
                                                    f"overwrite it\n"
    assert invoke(runner, "report", tmp_path, "--force").exit_code == 0


def test_report_skips_a_corrupt_artifact_and_summarises_the_rest(runner, tmp_path):
    good = write_features(tmp_path / "good.h5")
    invoke(runner, "evaluate", good, "--record")
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # HDF5 signature, garbage after
    (tmp_path / "notes.h5").write_text("hello")
    out = tmp_path / "summary.md"
    result = invoke(runner, "report", tmp_path, "-o", out)
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: skipped ") for line in warnings)
    text = out.read_text()
    skipped = text.split("## Skipped")[1]
    assert "`broken.h5`: unreadable HDF5 file" in skipped and "`notes.h5`: not an HDF5 file" in skipped
    assert f"| {read_records(good)[0]['map']:.4f} |" in text and "`good.h5`" in text
    assert not (tmp_path / "summary.map-vs-bits.png").exists()  # no codes recorded: no mAP-vs-bits figure


def test_report_recursive_finds_subfolders(runner, tmp_path):
    (tmp_path / "sub").mkdir()
    write_features(tmp_path / "sub" / "f.h5")
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {tmp_path}: no deephash artifacts (*.h5, *.hdf5) found (--recursive searches "
                             f"subfolders)\n")
    result = invoke(runner, "report", tmp_path, "--recursive")
    assert result.exit_code == 0 and "`sub/f.h5`" in (tmp_path / "report.md").read_text()


def test_report_errors(runner, tmp_path):
    result = invoke(runner, "report", tmp_path / "absent")
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'absent'}: no such folder\n"
    (tmp_path / "bad.h5").write_text("nope")
    result = invoke(runner, "report", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path}: no readable deephash artifacts (1 skipped: bad.h5: not an "
                                    f"HDF5 file")
    assert not (tmp_path / "report.md").exists()
    write_features(tmp_path / "f.h5")
    result = invoke(runner, "report", tmp_path, "-o", "-")
    assert result.exit_code == 2 and "-o - is not supported" in result.stderr


def test_method_names_keep_scheduled_dtsh_apart():
    from deephash_cli.info import method_of

    assert method_of({"stage": "train-hash", "method": "dtsh", "miner": "all"}) == "dtsh + all"
    assert method_of({"stage": "train-hash", "method": "dtsh", "lam_warmup": 3, "alpha_ramp": "1:16:3",
                      "miner": None}) == "dtsh-schedule + random"
    assert method_of({"stage": "encode", "model_config": {"method": "dtsh", "lam_warmup": 2,
                                                          "miner": "all"}}) == "dtsh-schedule + all"


def test_map_vs_bits_keeps_fine_tuned_codes_apart_and_takes_the_best_on_validation_of_a_series():
    from deephash_cli.groups import summarize
    from deephash_cli.report import map_vs_bits_series

    def row(stage, bits, value, validation=None, method="triplet-ranking + all", current=True):
        return {"kind": "codes", "stage": stage, "bits": bits, "map": summarize([value]) if value else None,
                "val_map": summarize([validation]) if validation else None, "method": method, "current": current,
                "dataset": "imagefolder", "backbone": "mobilenet_v2", "evaluation": "splits/hamming",
                "members": [{"file": f"{stage}-{bits}-{value}.h5"}]}

    def points(series):
        return {label: (bits, means) for label, (bits, means, _) in series.items()}

    rows = [row("encode", 12, 0.6), row("encode", 48, 0.7), row("extract", 48, 0.8, validation=0.5),
            row("extract", 48, 0.85, validation=0.6), row("extract", 48, 0.99, validation=0.9, current=False),
            {**row("encode", 48, None), "kind": "model"}]
    assert points(map_vs_bits_series(rows)) == {"triplet-ranking (head)": ([12, 48], [0.6, 0.7]),
                                                "triplet-ranking (fine-tuned)": ([48], [0.85])}
    assert points(map_vs_bits_series(rows[:2])) == {"triplet-ranking": ([12, 48], [0.6, 0.7])}
    # Validation decides, not test: the better validation score with the lower test mAP is drawn.
    rows[3] = row("extract", 48, 0.85, validation=0.4)
    assert points(map_vs_bits_series(rows))["triplet-ranking (fine-tuned)"] == ([48], [0.8])


def test_artifacts_record_the_thread_count_and_info_shows_it(runner, tmp_path):
    import torch

    out = tmp_path / "f.h5"
    assert invoke(runner, "extract", "--dataset", "digits", "--limit-per-class", "5", "-o", out).exit_code == 0
    info = json.loads(invoke(runner, "info", out, "--json").stdout)
    assert info["versions"]["torch_threads"] == str(torch.get_num_threads())
    assert info["versions"]["torch_deterministic"] in ("true", "false")
    text = invoke(runner, "info", out).stdout
    assert f"{torch.get_num_threads()} intra-op threads" in text


def test_dtsh_constants_other_than_the_defaults_are_named():
    from deephash_cli.info import method_of

    assert method_of({"stage": "train-hash", "method": "dtsh", "bits": 48, "lam": 1 / 48, "alpha": None,
                      "miner": "all"}) == "dtsh + all"
    assert method_of({"stage": "train-hash", "method": "dtsh", "bits": 48, "lam": 1.0, "alpha": 24.0,
                      "miner": "all"}) == "dtsh λ=1 + all"
    assert method_of({"stage": "train-hash", "method": "dtsh", "bits": 48, "lam": 0.02, "alpha": 5.0,
                      "miner": None}) == "dtsh λ=0.02 α=5 + random"


def test_report_shows_recorded_metric_learning_columns_as_seed_means(runner, tmp_path):
    # Two seeds of one head, evaluated with Recall@1, MAP@R and NMI: one row, mean ± std of each recorded value.
    features = write_features(tmp_path / "f.h5")
    out = tmp_path / "emb.h5"
    assert invoke(runner, "train-triplet", features, "-o", out, "--margin", "0.2", "--dim", "8", "--seeds", "0,1",
                  *MINED, *FAST).exit_code == 0
    recorded = {}
    for seed in (0, 1):
        path = tmp_path / f"emb.seed{seed}.h5"
        result = invoke(runner, "evaluate", path, "--metric", "recall@1,map@r,nmi,map", "--json", "--record")
        assert result.exit_code == 0, result.output
        recorded[seed] = json.loads(result.stdout)
    assert invoke(runner, "report", tmp_path, "-o", tmp_path / "r.md").exit_code == 0
    lines = (tmp_path / "r.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| # |"))
    columns = [c.strip() for c in header.split("|")[1:-1]]
    assert columns[11:14] == ["R@1", "MAP@R", "NMI"]  # after P@100, before evaluation
    row = next(line for line in lines if "`emb.seed0.h5`, `emb.seed1.h5`" in line)
    cells = dict(zip(columns, (c.strip() for c in row.split("|")[1:-1])))

    def mean_std(values):
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"

    assert cells["R@1"] == mean_std([recorded[s]["recall_at"]["1"] for s in (0, 1)])
    assert cells["MAP@R"] == mean_std([recorded[s]["map_at_r"] for s in (0, 1)])
    assert cells["NMI"] == mean_std([recorded[s]["nmi"] for s in (0, 1)])
    assert cells["mAP"] == mean_std([recorded[s]["map"] for s in (0, 1)])
    # Rows without such records show a dash; a folder without any has no such columns (previous test).
    features_row = next(line for line in lines if "`f.h5`" in line)
    assert [c.strip() for c in features_row.split("|")[1:-1]][11:14] == ["—", "—", "—"]
