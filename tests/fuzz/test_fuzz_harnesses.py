"""The atheris harnesses (tests/fuzz/fuzz_*.py) stay runnable: each imports without
atheris, and its committed corpus (tests/fuzz/corpus/<target>/, minimised inputs of
past runs of ``make fuzz``, the crashes found among them) runs through its target
function without a crash.  The fuzzing itself is ``make fuzz``, not CI.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
TARGETS = ("frames", "batches", "config", "http_bodies")


@functools.cache  # once per process: a harness holds a temporary file
def load(target: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{target}", HERE / f"fuzz_{target}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_runner_knows_every_harness() -> None:
    runner = load_path(HERE / "run.py")
    assert runner.TARGETS == TARGETS
    assert sorted(p.stem for p in HERE.glob("fuzz_*.py")) == sorted(f"fuzz_{t}" for t in TARGETS)


def load_path(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", TARGETS)
def test_the_corpus_runs_through_the_harness(target: str) -> None:
    harness = load(target)
    assert target == harness.TARGET
    corpus = sorted((HERE / "corpus" / target).iterdir())
    # Small enough for the repository (the runner's --merge keeps it so), big enough to
    # exercise the target.
    assert 5 <= len(corpus) <= 500
    for path in corpus:
        data = path.read_bytes()
        assert len(data) <= harness.MAX_LEN, path.name
        harness.one_input(data)


@pytest.mark.parametrize("target", TARGETS)
def test_the_seeds_run_through_the_harness(target: str) -> None:
    """The seeds are real inputs (frames, batches, config files, API bodies) and must keep
    being accepted as well-formed where they are: a seed that turned into a crash means
    the code or the harness changed."""
    harness = load(target)
    seeds = list(harness.seeds())
    assert seeds
    for data in seeds:
        harness.one_input(data)
    assert all(isinstance(w, bytes) for w in harness.dictionary())
