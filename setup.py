"""Build step for the package index's long description; everything else is in pyproject.toml.

README.md links docs/*.md and shows screenshots by relative paths: they work on GitHub and in a
checkout, but not on a package index page, where nothing beside the text is published. The long
description is README.md with each relative target made absolute in the repository named by
``[project.urls] Source``, at the release's tag ``v<version>`` (a development version: ``main``),
so a release's page links the documents and images of that release. setuptools runs this file
when it builds the sdist and the wheel; tests/unit/test_packaging.py checks the result.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # a build requirement there (pyproject.toml)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
#: An inline Markdown link or image target: what follows ``](`` up to a space or ``)``.
_INLINE_TARGET = re.compile(r"(?<=\]\()([^)\s]+)")
#: A scheme (``https:``, ``mailto:``): the target is absolute already.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: Targets shown as images (served raw) rather than pages (GitHub's file view).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")


def project_version() -> str:
    """``__version__`` of the package, read without importing it (it may not import while building)."""
    text = (ROOT / "airflow_provider_mai" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if found is None:
        raise RuntimeError("airflow_provider_mai/__init__.py defines no __version__")
    return found.group(1)


def release_ref(version: str) -> str:
    """The git ref whose files a release's page links: its tag, or ``main`` for a development build.

    :param version: the package version, e.g. ``0.1.0`` or ``0.2.0.dev1``.
    """
    return "main" if re.search(r"(dev|\+)", version) else f"v{version}"


def index_readme(text: str, source: str, ref: str) -> str:
    """``text`` (Markdown) with each relative link or image target made absolute.

    In-page anchors (``#section``) and targets with a scheme are kept as they are.

    :param text: the Markdown, e.g. README.md's content.
    :param source: the repository's web address, e.g. ``https://github.com/owner/name``.
    :param ref: the tag or branch whose files the links name.
    """
    base = source.rstrip("/")

    def absolute(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith("#") or _SCHEME.match(target):
            return target
        path = target.removeprefix("./")
        view = "raw" if path.split("#", 1)[0].lower().endswith(_IMAGE_SUFFIXES) else "blob"
        return f"{base}/{view}/{ref}/{path}"

    return _INLINE_TARGET.sub(absolute, text)


def long_description() -> str:
    """README.md as the package index shows it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return index_readme(readme, project["urls"]["Source"], release_ref(project_version()))


if __name__ == "__main__":  # as setuptools runs it; tests import the functions above
    from setuptools import setup

    setup(long_description=long_description(), long_description_content_type="text/markdown")
