"""Packaging: the installed names are wharf, wharf.broker and wharf.protocol (from the
client/, broker/ and protocol/ directories), in the editable install and in a built wheel.

The wheel is built from a copy of the sources in tmp_path, so the test leaves no build/
or egg-info behind in the repository.  It needs ``build`` plus the [build-system]
requirements in the interpreter that runs it (``--no-isolation``: no network); it is
skipped otherwise.  Set WHARF_BUILD_PYTHON to build with another interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

import pytest

import wharf

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("client", "broker", "protocol")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")
BUILD_TIMEOUT_S = 300
RUNTIME_DEPS = ("uvloop", "msgpack", "click", "prometheus-client")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -I: no PYTHONPATH, no user site, and the script's directory is not on sys.path,
    # so only installed packages can be imported.
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- the editable install ----------------------------------------------------------------


def test_installed_import_names(tmp_path: Path) -> None:
    code = (
        "import importlib.util, wharf, wharf.broker, wharf.protocol\n"
        "import wharf.broker.server, wharf.broker.cli.main, wharf.protocol.frames\n"
        "assert callable(wharf.connect)\n"
        "assert wharf.protocol.frames.HANDSHAKE == b'WHARF\\x00\\x01\\x00'\n"
        "for generic in ('client', 'broker', 'protocol'):\n"
        "    assert importlib.util.find_spec(generic) is None, generic\n"
        "print(wharf.__file__, wharf.broker.__file__, wharf.protocol.__file__)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    sdk, broker, protocol = (Path(p) for p in result.stdout.split())
    assert sdk.parent.name == "client"
    assert broker.parent.name == "broker"
    assert protocol.parent.name == "protocol"


def test_sdk_is_typed() -> None:
    assert (Path(wharf.__file__).parent / "py.typed").exists()


def test_console_script_entry_point() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("wharf") == "wharf.broker.cli.main:main"
    assert Path(sys.executable).with_name("wharf").exists()


def test_version_is_consistent() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert version("wharf") == declared == wharf.__version__


PACKAGING_BUG = (
    "pyproject.toml [tool.setuptools] packages lists only wharf, wharf.broker and "
    "wharf.protocol, so the wharf.broker.store subpackage (imported by broker/server.py) "
    "is left out of wheels"
)


def _source_packages() -> list[str]:
    """Dotted installed names of every package directory in the source tree."""
    names = []
    for d, dotted in (
        ("client", "wharf"),
        ("broker", "wharf.broker"),
        ("protocol", "wharf.protocol"),
    ):
        for init in sorted((REPO / d).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / d)
            names.append(".".join([dotted, *rel.parts]))
    return names


def test_pyproject_lists_every_source_package() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        setuptools_cfg = tomllib.load(f)["tool"]["setuptools"]
    packages = setuptools_cfg.get("packages")
    if not isinstance(packages, list):
        pytest.skip("packages are discovered, not listed; the wheel tests check the result")
    missing = [name for name in _source_packages() if name not in packages]
    assert not missing, f"packages not listed in pyproject.toml: {missing}"


# -- a built wheel ---------------------------------------------------------------------------


def _unmet_build_requirements(python: str) -> list[str]:
    """[build-system] requirements (and `build`) missing from ``python``'s environment."""
    with (REPO / "pyproject.toml").open("rb") as f:
        requires = list(tomllib.load(f)["build-system"]["requires"])
    if python == sys.executable:
        if importlib.util.find_spec("build") is None:
            return ["build"]
        from packaging.requirements import Requirement

        unmet = []
        for spec in requires:
            req = Requirement(spec)
            try:
                installed = version(req.name)
            except PackageNotFoundError:
                unmet.append(spec)
                continue
            if not req.specifier.contains(installed, prereleases=True):
                unmet.append(f"{spec} (have {installed})")
        return unmet
    check = (
        "import sys, importlib.util\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "from packaging.requirements import Requirement\n"
        "bad = [] if importlib.util.find_spec('build') else ['build']\n"
        "for spec in sys.argv[1:]:\n"
        "    r = Requirement(spec)\n"
        "    try:\n"
        "        v = version(r.name)\n"
        "    except PackageNotFoundError:\n"
        "        bad.append(spec); continue\n"
        "    if not r.specifier.contains(v, prereleases=True): bad.append(spec)\n"
        "print('\\n'.join(bad))\n"
    )
    result = subprocess.run(
        [python, "-c", check, *requires], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        return [f"cannot check with {python}: {result.stderr.strip()}"]
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = os.environ.get("WHARF_BUILD_PYTHON", sys.executable)
    unmet = _unmet_build_requirements(python)
    if unmet:
        pytest.skip(f"cannot build without isolation, missing: {', '.join(unmet)}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, src / name)
    for name in SOURCE_DIRS:
        shutil.copytree(
            REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    out = tmp / "dist"
    result = subprocess.run(
        [python, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # setuptools' deprecation notices (e.g. for a TOML license table) end in "!!" banners.
    assert "deprecated" not in (result.stdout + result.stderr).lower(), result.stderr
    (built,) = out.glob("wharf-*.whl")
    return built


def test_wheel_contains_the_mapped_packages_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for required in (
        "wharf/__init__.py",
        "wharf/py.typed",
        "wharf/connection.py",
        "wharf/broker/__init__.py",
        "wharf/broker/server.py",
        "wharf/broker/cli/main.py",
        "wharf/protocol/__init__.py",
        "wharf/protocol/frames.py",
        "wharf/protocol/codec.py",
    ):
        assert required in names, required
    # Every module of the source tree, subpackages included, at its installed path.
    prefixes = {"client": "wharf", "broker": "wharf/broker", "protocol": "wharf/protocol"}
    missing = [
        f"{prefixes[d]}/{path.relative_to(REPO / d).as_posix()}"
        for d in SOURCE_DIRS
        for path in sorted((REPO / d).rglob("*.py"))
        if "__pycache__" not in path.parts
        and f"{prefixes[d]}/{path.relative_to(REPO / d).as_posix()}" not in names
    ]
    assert not missing, f"source modules missing from the wheel: {missing}"
    # The web UI's files (broker/http/ui.py serves them from the package).
    ui = REPO / "broker" / "http" / "ui"
    missing_ui = [
        f"wharf/broker/http/ui/{p.relative_to(ui).as_posix()}"
        for p in sorted(ui.rglob("*"))
        if p.is_file() and f"wharf/broker/http/ui/{p.relative_to(ui).as_posix()}" not in names
    ]
    assert not missing_ui, f"web UI files missing from the wheel: {missing_ui}"
    top_level = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top_level - dist_info == {"wharf"}, top_level
    for generic in ("client", "broker", "protocol", "tests", "benchmarks"):
        assert generic not in top_level


def test_wheel_metadata_and_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        dist_info = next(n.split("/", 1)[0] for n in zf.namelist() if ".dist-info/" in n)
        names = set(zf.namelist())
        entry_points_txt = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        top_level_txt = f"{dist_info}/top_level.txt"
        top_level = (
            zf.read(top_level_txt).decode().split() if top_level_txt in zf.namelist() else []
        )
    sections = entry_points_txt.split("[console_scripts]", 1)
    assert len(sections) == 2, entry_points_txt
    scripts = [line.replace(" ", "") for line in sections[1].splitlines() if "=" in line]
    assert "wharf=wharf.broker.cli.main:main" in scripts
    assert "Name: wharf" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert f"{dist_info}/licenses/LICENSE" in names
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for dep in RUNTIME_DEPS:
        assert any(dep in line.replace("_", "-") for line in requires), (dep, requires)
    assert set(top_level) <= {"wharf"}


def test_wheel_imports_from_its_own_files(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    # The unpacked wheel goes first on sys.path, ahead of the editable install's finder.
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "import wharf, wharf.broker.server, wharf.broker.cli.main, wharf.protocol.codec\n"
        "for name, module in sorted(sys.modules.items()):\n"
        "    if name == 'wharf' or name.startswith('wharf.'):\n"
        "        print(name, module.__file__)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert {"wharf", "wharf.broker.server", "wharf.protocol.codec"} <= set(loaded)
    # Every wharf module the broker pulls in must come from the wheel, not the checkout.
    outside = {
        name: path for name, path in loaded.items() if not Path(path).is_relative_to(unpacked)
    }
    assert not outside, f"modules not in the wheel, loaded from elsewhere: {outside}"
