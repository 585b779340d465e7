"""An artifact's recorded command, rerun in its recorded folder with its recorded thread count, remakes it bit for
bit (issue #16): the training stages are deterministic at a given thread count, and what an artifact records
(command, cwd, torch_threads) is enough to rerun it.

torch's thread count is per process, so every run here is a subprocess with OMP_NUM_THREADS set; each imports
the package from this work tree.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deephash_cli.artifacts import read_header
from tests.conftest import assert_bitwise_equal, invoke, without_timing

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "2", "--hidden", "32", "--device", "cpu"]


def deephash(argv: list[str], cwd: str | os.PathLike[str], threads: int) -> None:
    """`deephash ARGV` in a new process in ``cwd`` with torch limited to ``threads`` intra-op threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", "deephash_cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def rerun(header: dict) -> None:
    """Run an artifact's recorded command as the record says: in ``cwd``, with OMP_NUM_THREADS=torch_threads."""
    words = shlex.split(header["command"])
    assert words[0] == "deephash", header["command"]
    deephash(words[1:], cwd=header["cwd"], threads=int(header["versions"]["torch_threads"]))


HASH = ["train-hash", "digits.h5", "-o", "hash.model.h5", "--bits", "16", "--miner", "all", "--classes-per-batch",
        "10", "--samples-per-class", "4", *SMALL]
# --seeds records for each seed the single-seed command that remakes its two files.
TRIPLET = ["train-triplet", "digits.h5", "-o", "emb.h5", "--save-model", "emb.model.h5", "--seeds", "4", "--margin",
           "0.1,0.2", "--dim", "8", "--miner", "semihard", "--classes-per-batch", "10", "--samples-per-class", "4",
           *SMALL]


# One stage per thread count keeps this under half a minute (each process pays torch's import).
@pytest.mark.parametrize("threads, argv, made", [
    (1, HASH, ["hash.model.h5"]),
    (2, TRIPLET, ["emb.seed4.h5", "emb.seed4.model.h5"]),
])
def test_rerunning_the_recorded_command_remakes_every_dataset_bitwise(runner, tmp_path, threads, argv, made):
    work, kept = tmp_path / "work", tmp_path / "kept"
    work.mkdir()
    kept.mkdir()
    assert invoke(runner, "extract", "--dataset", "digits", "--limit-per-class", "30", "-o",
                  work / "digits.h5").exit_code == 0
    # Relative paths, as typed in a shell: the recorded cwd makes them rerunnable from anywhere.
    deephash(argv, cwd=work, threads=threads)
    headers = {name: read_header(work / name) for name in made}
    for name, header in headers.items():
        assert header["versions"]["torch_threads"] == str(threads)
        assert header["cwd"] == str(work)
        assert shlex.split(header["command"])[0] == "deephash"
        (work / name).rename(kept / name)
    commands = list(dict.fromkeys(header["command"] for header in headers.values()))
    assert len(commands) == 1  # the files of one run record one command
    if "--seeds" in argv:
        assert "--seeds" not in commands[0] and "--seed 4" in commands[0]
    rerun(headers[made[0]])
    for name, header in headers.items():
        assert assert_bitwise_equal(work / name, kept / name) >= 8, name
        again = read_header(work / name)
        assert without_timing(again["config"]) == without_timing(header["config"])
        assert (again["command"], again["cwd"], again["versions"]) == (header["command"], header["cwd"],
                                                                        header["versions"])
