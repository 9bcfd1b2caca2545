"""Run one atheris fuzz target: ``python tests/fuzz/run.py TARGET [libFuzzer flags]``.

TARGET is one of frames, batches, config, http_bodies (the harness is
tests/fuzz/fuzz_<TARGET>.py, a ``one_input(bytes)`` function that raises on a crash).
``make fuzz`` runs every target; see tests/README.md ("Coverage-guided fuzzing").

    run.py TARGET -runs=1000000   fuzz: new inputs go to build/fuzz/TARGET/new, the
                                  committed corpus tests/fuzz/corpus/TARGET is read only;
                                  a crash is written to build/fuzz/TARGET/crash-<sha1>
    run.py TARGET --merge         minimise: the committed corpus becomes the smallest
                                  set of its files and build/fuzz/TARGET/new that keeps
                                  the coverage (libFuzzer -merge=1)
    run.py TARGET --seed          add the harness's seed inputs (real frames, batches,
                                  config files, API bodies) to the committed corpus
    run.py TARGET FILE...         run these inputs once (reproduce a crash)

Needs atheris (``pip install -e '.[fuzz]'``), except for --seed.
"""

from __future__ import annotations

import hashlib
import importlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parents[1]
TARGETS: Final = ("frames", "batches", "config", "http_bodies")
# Code that atheris instruments for coverage feedback: Wharf itself, and the pure-Python
# standard library parsers the config target goes through.
INSTRUMENTED: Final = ["wharf", "tomllib"]
# libFuzzer's per-input timeout (s): no input may take this long (a hang is a crash).
INPUT_TIMEOUT_S: Final = 10
# Memory per fuzzing process (MiB); more is a crash (an allocation bomb).
RSS_LIMIT_MB: Final = 2048


def corpus_dir(target: str) -> Path:
    return HERE / "corpus" / target


def work_dir(target: str) -> Path:
    return ROOT / "build" / "fuzz" / target


def load(target: str) -> ModuleType:
    if target not in TARGETS:
        raise SystemExit(f"unknown fuzz target {target!r}; known: {', '.join(TARGETS)}")
    sys.path.insert(0, str(HERE))
    return importlib.import_module(f"fuzz_{target}")


def seed(target: str) -> None:
    harness = load(target)
    out = corpus_dir(target)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for data in harness.seeds():
        # libFuzzer's own naming: the SHA-1 of the content, so reseeding adds no copies.
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)
        n += 1
    print(f"{target}: {n} seed inputs in {out.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    target, flags = argv[1], argv[2:]
    if flags == ["--seed"]:
        seed(target)
        return
    if flags == ["--merge"]:
        merge(target)
        return
    import atheris  # the optional extra: pip install -e '.[fuzz]'

    with atheris.instrument_imports(include=INSTRUMENTED):
        harness = load(target)
    work = work_dir(target)
    new = work / "new"
    new.mkdir(parents=True, exist_ok=True)
    corpus = corpus_dir(target)
    lib_flags = [
        f"-max_len={harness.MAX_LEN}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={work}/",
        "-print_final_stats=1",
    ]
    words = harness.dictionary()
    if words:
        dict_file = work / "dictionary.txt"
        dict_file.write_text("".join(f'"{_escape(w)}"\n' for w in words))
        lib_flags.append(f"-dict={dict_file}")
    # libFuzzer runs argv[0] through the shell for the inner processes of a merge: it must
    # be the whole command that reaches this target.
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__)))} {target}"
    if any(not f.startswith("-") for f in flags):  # inputs to replay, or a merge's dirs
        atheris.Setup([command, *lib_flags, *flags], harness.one_input)
    else:
        atheris.Setup([command, *lib_flags, *flags, str(new), str(corpus)], harness.one_input)
    atheris.Fuzz()


def merge(target: str) -> None:
    """Minimise the committed corpus plus the new inputs into a fresh directory (libFuzzer
    exits the process when a merge ends, so it runs in a child), then swap it in."""
    corpus, new = corpus_dir(target), work_dir(target) / "new"
    new.mkdir(parents=True, exist_ok=True)
    merged = Path(tempfile.mkdtemp(prefix="merged-", dir=work_dir(target)))
    subprocess.run(
        [sys.executable, __file__, target, "-merge=1", str(merged), str(corpus), str(new)],
        check=True,
    )
    if not any(merged.iterdir()):
        raise SystemExit(f"{target}: the merge kept no input; the corpus is left as it was")
    shutil.rmtree(corpus)
    shutil.move(merged, corpus)
    shutil.rmtree(new)
    print(f"{target}: {len(list(corpus.iterdir()))} inputs in {corpus.relative_to(ROOT)}")


def _escape(word: bytes) -> str:
    """A libFuzzer dictionary entry: printable ASCII as is, the rest as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in word)


if __name__ == "__main__":
    main(sys.argv)
