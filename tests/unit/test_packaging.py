"""The distributions as the package index, pip and a packager get them: the licence, the metadata, the
index page's README, a wheel with only the package and an sdist with the whole source tree.

The sdist is built from a copy of the source files and the wheel from that sdist, as ``python -m
build`` does, with the setuptools of this virtualenv (no network: it must meet the build floor).
"""

from __future__ import annotations

import email
import hashlib
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from packaging.requirements import Requirement
from packaging.version import Version

from airflow_provider_mai import __version__
from tests.support.paths import REPO_ROOT
from tests.support.servers import unavailable

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SOURCE_URL = PYPROJECT["project"]["urls"]["Source"]
#: The Apache License 2.0 exactly as the ASF publishes it (LICENSE-2.0.txt).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
#: What setuptools writes into an sdist besides the source files.
SDIST_GENERATED = {"PKG-INFO", "setup.cfg"}
DIST_NAME = f"airflow_provider_mai-{__version__}"

BUILD = """
import sys
from setuptools import build_meta
build = build_meta.build_sdist if sys.argv[1] == "sdist" else build_meta.build_wheel
build(sys.argv[2])
"""


def setup_module_functions() -> dict[str, Any]:
    """setup.py's functions, without running setup() (it guards that by ``__name__``)."""
    return runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="setup_for_tests")


def source_files() -> list[str]:
    """The project's files: what git tracks (and new files it does not ignore); in an unpacked sdist,
    the files it lists in SOURCES.txt."""
    if (REPO_ROOT / ".git").exists():
        listed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()
    else:
        listed = (REPO_ROOT / "airflow_provider_mai.egg-info" / "SOURCES.txt").read_text().splitlines()
    return sorted(
        name
        for name in listed
        if (REPO_ROOT / name).is_file() and ".egg-info/" not in name and name not in SDIST_GENERATED
    )


def build_floor() -> Version:
    """The setuptools version ``[build-system] requires`` starts from."""
    requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    (setuptools,) = [r for r in requires if r.name == "setuptools"]
    (floor,) = [Version(s.version) for s in setuptools.specifier if s.operator == ">="]
    return floor


def run_backend(kind: str, source: Path, out: Path) -> Path:
    """Build ``kind`` (sdist or wheel) of the project in ``source`` into ``out``; the file made."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", BUILD, kind, str(out)], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (made,) = out.glob("*.tar.gz" if kind == "sdist" else "*.whl")
    return made


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(sdist, wheel)``: the sdist built from a copy of the source files, the wheel from the sdist."""
    import setuptools

    if Version(setuptools.__version__) < build_floor():
        unavailable(
            f"building needs setuptools>={build_floor()} in this virtualenv (it has {setuptools.__version__})"
        )
    work = tmp_path_factory.mktemp("dists")
    for name in source_files():
        (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, work / "src" / name)
    sdist = run_backend("sdist", work / "src", work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    return sdist, run_backend("wheel", work / "unpacked" / DIST_NAME, work / "dist")


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(f"{DIST_NAME}.dist-info/METADATA"))


def link_targets(markdown: str) -> list[str]:
    """Every link and image target of a Markdown text, as a renderer resolves them."""
    targets = []
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        for child in token.children or []:
            if child.type == "link_open":
                targets.append(str(child.attrs["href"]))
            elif child.type == "image":
                targets.append(str(child.attrs["src"]))
    return targets


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub and the package index give the headings (lower case, punctuation dropped)."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    titles = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    return {re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-") for title in titles}


# -- the licence -----------------------------------------------------------------------------------
def test_licence_is_the_apache_2_text_and_declared_as_pep_639_says():
    assert hashlib.sha256((REPO_ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    # PEP 639 forbids licence classifiers beside a licence expression.
    assert not [c for c in PYPROJECT["project"]["classifiers"] if c.startswith("License ::")]


def test_the_build_floor_is_one_that_knows_pep_639():
    # setuptools 68.0-76.1 refuse `project.license` as an expression (docs/releasing.md).
    assert build_floor() >= Version("77.0.1")
    assert "wheel" not in PYPROJECT["build-system"]["requires"]  # setuptools makes wheels itself


def test_wheel_carries_the_licence_and_its_metadata_names_it(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"{DIST_NAME}.dist-info/licenses/LICENSE") == (REPO_ROOT / "LICENSE").read_bytes()
    metadata = wheel_metadata(wheel)
    assert Version(metadata["Metadata-Version"]) >= Version("2.4")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_project_urls_are_the_declared_ones(dists):
    _, wheel = dists
    urls = dict(u.split(", ", 1) for u in wheel_metadata(wheel).get_all("Project-URL") or [])
    assert urls == PYPROJECT["project"]["urls"]
    assert set(urls) == {"Documentation", "Source", "Changelog", "Issues"}
    assert all(url.startswith(SOURCE_URL) for url in urls.values())


# -- what each distribution holds ------------------------------------------------------------------
def test_wheel_holds_the_package_and_nothing_else(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {n.split("/", 1)[0] for n in names} == {"airflow_provider_mai", f"{DIST_NAME}.dist-info"}
    packaged = {n for n in names if n.startswith("airflow_provider_mai/")}
    expected = {n for n in source_files() if n.startswith("airflow_provider_mai/")}
    assert packaged == expected  # every module, py.typed and the plugin's templates
    assert "airflow_provider_mai/py.typed" in packaged


def test_sdist_is_the_whole_source_tree(dists):
    # Tests whole (conftest, support/, their DAGs), the example DAGs, docs, scripts and benchmarks:
    # an unpacked sdist runs its test suite (CONTRIBUTING.md).
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        members = [m.name.removeprefix(f"{DIST_NAME}/") for m in archive.getmembers() if m.isfile()]
    shipped = sorted(n for n in members if ".egg-info/" not in n and n not in SDIST_GENERATED)
    assert shipped == source_files()
    for needed in ("LICENSE", "tests/conftest.py", "tests/support/paths.py", "scripts/test.sh", "dags"):
        assert any(n == needed or n.startswith(f"{needed}/") for n in shipped), needed


# -- the package index page ------------------------------------------------------------------------
def test_index_readme_links_only_absolute_urls_and_real_anchors(dists):
    _, wheel = dists
    metadata = wheel_metadata(wheel)
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    targets = link_targets(description)
    anchors = heading_anchors(description)
    broken = [t for t in targets if not (t.startswith("https://") or t.removeprefix("#") in anchors)]
    assert broken == []
    # Each relative target of README.md (documents, anchors in them, screenshots) became a link into
    # the repository at this release's tag; every other target is as README.md has it.
    ref = setup_module_functions()["release_ref"](__version__)
    original = link_targets((REPO_ROOT / "README.md").read_text())
    assert len(targets) == len(original)
    relative = [(o, t) for o, t in zip(original, targets, strict=True) if o != t]
    assert len(relative) >= 10
    for before, after in relative:
        view = "raw" if before.endswith((".jpg", ".png")) else "blob"
        assert after == f"{SOURCE_URL}/{view}/{ref}/{before}"
        assert (REPO_ROOT / before.split("#", 1)[0]).is_file(), before  # it names a file that exists


def test_index_readme_rewrites_relative_targets_only():
    functions = setup_module_functions()
    text = (
        "[a](docs/x.md#part) ![b](docs/y.jpg) [c](#here) [d](https://example.org/e) [f](./CHANGELOG.md) "
        '[g](mailto:a@example.org) ![h](docs/z.png "title")'
    )
    assert functions["index_readme"](text, "https://github.com/o/r/", "v1.2.0") == (
        "[a](https://github.com/o/r/blob/v1.2.0/docs/x.md#part) "
        "![b](https://github.com/o/r/raw/v1.2.0/docs/y.jpg) [c](#here) [d](https://example.org/e) "
        "[f](https://github.com/o/r/blob/v1.2.0/CHANGELOG.md) [g](mailto:a@example.org) "
        '![h](https://github.com/o/r/raw/v1.2.0/docs/z.png "title")'
    )


@pytest.mark.parametrize(
    ("version", "ref"),
    [("0.1.0", "v0.1.0"), ("1.4.2", "v1.4.2"), ("0.2.0.dev1", "main"), ("0.1.0+local", "main")],
)
def test_a_release_links_its_tag_and_a_development_build_main(version, ref):
    assert setup_module_functions()["release_ref"](version) == ref


def test_the_version_setup_py_reads_is_the_packages():
    assert setup_module_functions()["project_version"]() == __version__
