"""The records the plugin's pages render: task instances, their images, runs of images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    source: TaskImage | None = None

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


@dataclass
class RunImages:
    """A DAG run and its MAI images, edits grouped after the images they were made from."""

    dag_id: str
    run_id: str
    run_after: datetime | None
    state: str | None
    images: list[TaskImage] = field(default_factory=list)
    #: How many images the run has (``images`` holds the first of them when a page shows fewer).
    total: int = 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.images)

    @property
    def query(self) -> str:
        from urllib.parse import urlencode

        return urlencode({"dag_id": self.dag_id, "run_id": self.run_id})

    def chains(self) -> list[list[TaskImage]]:
        """The images as chains: each image not made from another image of this run, followed
        by the images edited from it (depth first)."""
        link_sources(self.images)
        chains: list[list[TaskImage]] = []
        for root in (image for image in self.images if image.source is None):
            chain: list[TaskImage] = []
            stack = [root]
            while stack:
                image = stack.pop()
                if any(image is seen for seen in chain):
                    continue
                chain.append(image)
                stack.extend(reversed(image.derived))
            chains.append(chain)
        return chains


def link_sources(images: Sequence[TaskImage]) -> None:
    """Set ``source``/``derived`` for edits whose input (``source_image``) is in ``images``."""
    by_uri = {image.uri: image for image in images if image.uri}
    for image in images:
        image.source, image.derived = None, []
    for image in images:
        parent = by_uri.get(image.source_image or "")
        if parent is not None and parent is not image:
            image.source = parent
            parent.derived.append(image)


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
