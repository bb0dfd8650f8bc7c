"""The "MAI image" extra link, and the relative URLs of the provider's UI plugin.

Imported by the operators at every DAG parse, so it imports nothing but ``airflow.sdk`` and the
standard library. Every URL here is *relative to the Airflow UI's base* (no leading ``/``): the UI
sets ``<base href>`` to its own root, so the same link works at ``/``, behind a proxy prefix, and
inside a markdown body (a human review step) without knowing the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: Where the plugin's FastAPI app is mounted in the api-server.
PLUGIN_PREFIX = "mai"
#: ``url_route`` of the plugin's pages in the Airflow UI (``/plugin/<route>``).
GALLERY_ROUTE = "mai-images"
TASK_INSTANCE_ROUTE = "mai-image"
DAG_RUN_ROUTE = "mai-run-images"
#: Thumbnail sizes the plugin makes (longest side, pixels).
THUMBNAIL_SIZES = (160, 320)
DEFAULT_THUMBNAIL_SIZE = 320


def image_query(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The query string naming one task instance's image, as every plugin route takes it."""
    return urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index})


_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 as MAI results record it: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def content_tag(sha256: str) -> str:
    """The tag (``v=``) an image's URLs carry: browsers may keep what such a URL names for good,
    and a new image (a re-run) has new URLs. URLs without it are revalidated on every use."""
    return sha256[:16]


def thumbnail_url(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int = -1,
    *,
    size: int = DEFAULT_THUMBNAIL_SIZE,
    sha256: str | None = None,
) -> str:
    """A task instance's thumbnail (JPEG), relative to the UI's base: for ``![alt](...)`` in markdown.

    :param sha256: the image's sha256 (from its result), to let browsers cache the thumbnail.
    """
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"size must be one of {THUMBNAIL_SIZES}; got {size!r}")
    if sha256 is not None and not is_sha256(sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits, as a MAI result records it")
    url = f"{PLUGIN_PREFIX}/thumb?{image_query(dag_id, run_id, task_id, map_index)}&size={size}"
    return f"{url}&v={content_tag(sha256)}" if sha256 else url


def task_instance_tab_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The task instance's "MAI image" tab in the Airflow UI, relative to the UI's base."""
    path = f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    if map_index is not None and map_index >= 0:
        path += f"/mapped/{map_index}"
    return f"{path}/plugin/{TASK_INSTANCE_ROUTE}"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def _markdown_text(text: str) -> str:
    """Plain text for a markdown cell: special characters escaped (a prompt cannot inject links or
    images into the reviewer's page), line breaks flattened."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def review_markdown(
    dag_id: str,
    run_id: str,
    task_id: str,
    results: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    *,
    size: int = DEFAULT_THUMBNAIL_SIZE,
) -> str:
    """A markdown table of a mapped MAI task's images, for a Human-in-the-loop request's body.

    One column per map index (``results`` in map index order, as a mapped task's output is):
    its label (the option a reviewer picks), thumbnail, prompt and a link to its "MAI image" tab.
    The thumbnails are served by the UI plugin to the reviewer's browser with their login. A
    result that is not a MAI image (no well-formed sha256: a task can return anything) gets no
    thumbnail, its column says so.
    """
    if len(labels) != len(results):
        raise ValueError(f"{len(results)} results but {len(labels)} labels: give one label per image")
    header = " | ".join(f"**{_markdown_text(label)}**" for label in labels)
    rule = " | ".join(":-:" for _ in labels)
    cells, captions = [], []
    for index, (label, result) in enumerate(zip(labels, results, strict=True)):
        fields = result if isinstance(result, Mapping) else {}
        sha256 = fields.get("sha256")
        if is_sha256(sha256):
            url = thumbnail_url(dag_id, run_id, task_id, index, size=size, sha256=sha256)
            cells.append(f"![{_markdown_text(label)}]({url})")
        else:
            cells.append("*(no image)*")
        prompt = fields.get("prompt")
        captions.append(
            f"{_markdown_text(prompt if isinstance(prompt, str) else '')} "
            f"([details]({task_instance_tab_url(dag_id, run_id, task_id, index)}))"
        )
    rows = (header, rule, " | ".join(cells), " | ".join(captions))
    return "\n".join(f"| {row} |" for row in rows)


class MaiImageLink(BaseOperatorLink):
    """Operator extra link "MAI image": opens the task instance's image tab in the Airflow UI.

    Shown under "Extra Links" on the task instance's Details tab. The tab itself needs the
    provider's UI plugin in the api-server (``pip install "airflow-provider-mai[ui]"``).
    """

    name = "MAI image"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The tab's URL, relative to the UI's base (it opens in the same browser tab)."""
        return task_instance_tab_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
