"""The records the plugin's pages render: task instances, their images, runs of images."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from airflow_provider_mai.links import content_tag, image_query
from airflow_provider_mai.plugin.trust import shown_fields


@dataclass
class TaskInstanceRef:
    """One task instance: ``dag_id``, ``run_id``, ``task_id`` and ``map_index`` (-1: not mapped)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int

    @property
    def label(self) -> str:
        """``task`` or ``task[3]`` for a mapped task instance."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"

    @property
    def query(self) -> str:
        """The query string that names this task instance's image in every plugin route."""
        return image_query(self.dag_id, self.run_id, self.task_id, self.map_index)


@dataclass
class TaskImage(TaskInstanceRef):
    """One task instance's image: its result's fields (:func:`mai_result`), its sidecar once read."""

    result: dict[str, Any]
    recorded_at: datetime | None = None
    #: Why the result's details are not shown (it is too large to list), or None.
    unlisted: str | None = None
    sidecar: dict[str, Any] | None = None
    sidecar_error: str | None = None
    derived: list[TaskImage] = field(default_factory=list)
    #: The image of the same run this one was edited from (a bare reference when it is on
    #: another page), or None.
    source: TaskInstanceRef | None = None

    @property
    def version(self) -> str:
        """The content tag for this image's URLs: a re-run's new image gets new URLs."""
        sha256 = self.result.get("sha256")
        return content_tag(sha256) if sha256 else ""

    @property
    def uri(self) -> str | None:
        """Where the PNG is stored; None when it travels in XCom."""
        uri = self.result.get("uri")
        return uri if isinstance(uri, str) else None

    @property
    def sidecar_uri(self) -> str | None:
        """Where its sidecar is: beside the PNG, ``<name>.json``. The result's own ``sidecar_uri`` is
        never used: any task could name any file there."""
        if self.uri is None:
            return None
        from airflow_provider_mai.storage import open_location, sidecar_path

        return str(sidecar_path(open_location(self.uri)))

    def get(self, key: str) -> Any:
        """A field of the result, else of the sidecar (e.g. ``disclosure``), of the type it should have."""
        value = self.result.get(key)
        if value is None and self.sidecar is not None:
            value = shown_fields(self.sidecar).get(key)
        return value

    @property
    def operation(self) -> str | None:
        return self.get("operation")

    @property
    def source_image(self) -> str | None:
        return self.get("source_image")

    @property
    def created(self) -> str | None:
        """When the image was made, else when its XCom was written."""
        created = self.get("created_utc")
        if created:
            return str(created)
        return self.recorded_at.isoformat(timespec="seconds") if self.recorded_at else None

    @property
    def disclosure(self) -> str:
        from airflow_provider_mai.models import AI_DISCLOSURE

        return str(self.get("disclosure") or AI_DISCLOSURE)

    @property
    def dimensions(self) -> str | None:
        """Width by height, as the pages print it; None when the result does not say."""
        width, height = self.get("width"), self.get("height")
        return f"{width}\u00d7{height}" if width and height else None

    def display_size(self, box: int) -> tuple[int, int]:
        """The image's size scaled to fit a ``box`` x ``box`` square (for width/height attributes)."""
        width, height = self.get("width") or box, self.get("height") or box
        scale = min(box / width, box / height, 1.0)
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class ResultKey:
    """One result of a run as first read (before its value): its key, when it was recorded, and
    the two locations that pair an edit with its source (each bounded, None when too long)."""

    dag_run_id: int
    task_id: str
    map_index: int
    recorded_at: datetime | None
    uri: str | None
    source_image: str | None
    operation: str | None


@dataclass
class RunImages:
    """A DAG run and one page of its MAI images, grouped: each image that was not edited from
    another image of the run, followed by the images edited from it (usually a pair: a
    generation and its edit). Counts are of the whole run."""

    dag_id: str
    run_id: str
    run_after: datetime | None
    state: str | None
    #: The groups on this page (a group too large for a page continues on the next).
    groups: list[list[TaskImage]] = field(default_factory=list)
    #: Results in the whole run: all of them, edits (``operation`` "edit"), generations.
    total: int = 0
    edited: int = 0
    generated: int = 0
    #: Groups in the whole run, and how many of them are more than one image.
    group_total: int = 0
    pair_total: int = 0
    #: This page (1-based), how many pages the run has, and what this page holds: results
    #: ``first_image``..``last_image`` and groups ``first_group``..``last_group`` (1-based).
    page: int = 1
    pages: int = 1
    first_image: int = 0
    last_image: int = 0
    first_group: int = 0
    last_group: int = 0

    @property
    def images(self) -> list[TaskImage]:
        """The images on this page, group by group."""
        return [image for group in self.groups for image in group]

    @property
    def truncated(self) -> bool:
        """Whether the run has images on other pages."""
        return self.pages > 1

    @property
    def group_noun(self) -> str:
        """What the run's groups are called: pairs, single images, or both."""
        if self.pair_total == self.group_total:
            return "pairs" if self.group_total != 1 else "pair"
        if self.pair_total == 0:
            return "single images" if self.group_total != 1 else "single image"
        return "pairs and single images"

    @property
    def query(self) -> str:
        from urllib.parse import urlencode

        return urlencode({"dag_id": self.dag_id, "run_id": self.run_id})

    def page_query(self, page: int) -> str:
        """The query string of another page of this run."""
        return f"{self.query}&page={page}"

    @property
    def counts(self) -> str:
        """What the whole run holds, as its header says it: images by kind, and their groups."""
        kinds = [f"{self.generated} generated", f"{self.edited} edited"]
        others = self.total - self.generated - self.edited
        if others:
            kinds.append(f"{others} other")
        if not self.total:
            return "no images"
        return f"{_plural(self.total, 'image')} ({', '.join(kinds)}) in {self.group_total} {self.group_noun}"

    @property
    def showing(self) -> str:
        """What this page shows of the run, in the header's units."""
        if not self.total:
            return "No images in this run."
        images = _span(self.first_image, self.last_image)
        groups = _span(self.first_group, self.last_group)
        return f"Showing images {images} of {self.total} ({self.group_noun} {groups} of {self.group_total})"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}\u2013{last}"


def pair_key(location: str) -> str:
    """A location as pairs are matched on: the same file spelled two ways gives the same key.

    Text only, never opened, so a page can match the thousands of results of its runs cheaply; it
    decides what is shown *beside* what, never what may be read (that is
    :func:`airflow_provider_mai.storage.location_key`, as ``open_location`` reads a location).

    ``/data/x.png``, ``file:///data/x.png`` and ``/data/./x.png`` are one file; so are
    ``s3://aws_default@bucket/x.png`` and ``S3://bucket/x.png`` (the connection id says who
    reads the object, not which object it is).
    """
    text = location.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        return posixpath.normpath(text) if text else text
    scheme = scheme.lower()
    if scheme in ("file", "local"):
        return posixpath.normpath("/" + rest.lstrip("/"))
    netloc, _, path = rest.partition("/")
    netloc = netloc.rsplit("@", 1)[-1].lower()
    return f"{scheme}://{netloc}/{posixpath.normpath('/' + path).lstrip('/')}"


class Located(Protocol):
    """What pairing reads of a result: its task instance and its two locations."""

    @property
    def task_id(self) -> str: ...

    @property
    def map_index(self) -> int: ...

    @property
    def uri(self) -> str | None: ...

    @property
    def source_image(self) -> str | None: ...


_L = TypeVar("_L", bound=Located)


def _order(item: Located) -> tuple[str, int]:
    return item.task_id, item.map_index


def sources_of(items: Sequence[_L]) -> dict[int, int]:
    """Which item each edit was made from, by position in ``items``: the item whose ``uri`` is
    the edit's ``source_image`` (compared by :func:`pair_key`; when several items have that
    location, the first by task id and map index)."""
    by_location: dict[str, int] = {}
    for index in sorted(range(len(items)), key=lambda i: _order(items[i])):
        uri = items[index].uri
        if uri:
            by_location.setdefault(pair_key(uri), index)
    parents = {}
    for index, item in enumerate(items):
        source = item.source_image
        parent = by_location.get(pair_key(source)) if source else None
        if parent is not None and parent != index:
            parents[index] = parent
    return parents


def pair_up(items: Sequence[_L]) -> list[list[_L]]:
    """``items`` in groups: each item not edited from another of them, then the items edited from
    it, depth first (a generation and its edit: a pair). Groups are ordered by their first item's
    task id and map index, edits within a group likewise; every item is in exactly one group
    (an edit whose source is not among ``items`` starts a group of its own)."""
    parents = sources_of(items)
    children: dict[int, list[int]] = defaultdict(list)
    for index in sorted(parents, key=lambda i: _order(items[i])):
        children[parents[index]].append(index)
    ordered = sorted(range(len(items)), key=lambda i: _order(items[i]))
    # Roots first; then whatever a cycle of edits (a -> b -> a) left unvisited.
    starts = [index for index in ordered if index not in parents] + ordered
    seen: set[int] = set()
    groups: list[list[_L]] = []
    for start in starts:
        if start in seen:
            continue
        group, stack = [], [start]
        while stack:
            index = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            group.append(items[index])
            stack.extend(reversed(children[index]))
        groups.append(group)
    return sorted(groups, key=lambda group: _order(group[0]))


def paginate(groups: Sequence[Sequence[_L]], per_page: int) -> list[list[list[_L]]]:
    """Groups on pages of at most ``per_page`` items: whole groups while they fit, a group larger
    than a page split over pages of its own."""
    pages: list[list[list[_L]]] = []
    current: list[list[_L]] = []
    size = 0
    for group in groups:
        for start in range(0, len(group), per_page):
            part = list(group[start : start + per_page])
            if current and size + len(part) > per_page:
                pages.append(current)
                current, size = [], 0
            current.append(part)
            size += len(part)
    if current:
        pages.append(current)
    return pages


def link_sources(images: Sequence[TaskImage]) -> None:
    """Set ``source``/``derived`` for edits whose input (``source_image``) is in ``images``."""
    for image in images:
        image.source, image.derived = None, []
    for index, parent in sorted(sources_of(images).items(), key=lambda item: _order(images[item[0]])):
        images[index].source = images[parent]
        images[parent].derived.append(images[index])


@dataclass
class TaskInstanceImages:
    """What a task instance's tab shows: whether it is a MAI task, its state, and its image(s)."""

    exists: bool
    is_mai_task: bool
    state: str | None
    operator: str | None
    images: list[TaskImage]
    mapped: bool
    #: How many images there are (``images`` holds the first of them when the page shows fewer).
    total: int = 0
