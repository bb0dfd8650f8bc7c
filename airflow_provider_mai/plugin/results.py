"""MAI results as the api-server sees them: XCom rows in the metadata database, images in storage.

A task instance's image is found through its XCom ``return_value`` (a plain dict: ``uri``,
``b64_json``, ``sha256``, ``prompt``...). A task counts as a MAI task when it pushed the
``MaiImageLink`` extra link (every MAI operator does, at task end) or when its operator is one of
ours; a look-alike dict returned by any other task is not shown.

Any task can push that link and return any dict, so a result is untrusted input:

- its fields are coerced to the types the pages use (a field of another type is left out), and a
  result without a well-formed sha256 is not an image;
- only its ``uri`` is ever opened, and only when it names a ``.png`` (any case) off the web;
- the PNG is served only when its bytes hash to the XCom's sha256;
- the sidecar is read only from beside that PNG (``<name>.json``; the XCom's ``sidecar_uri`` is
  never used), and shown only when its own ``sha256`` is the XCom's;
- nothing is read from a location a request names.

Pages read results without their inline image (the database leaves ``b64_json`` out), each within
a byte bound, and only for the images they show: a run of a thousand images kept in XCom costs a
page a few kilobytes per image shown, not gigabytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from time import monotonic
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.links import MaiImageLink, content_tag, image_query, is_sha256

if TYPE_CHECKING:
    from sqlalchemy.engine import Row
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import ColumnElement

log = logging.getLogger(__name__)

#: XCom key of the "MAI image" extra link: pushed at the end of every MAI operator task instance.
LINK_XCOM_KEY = MaiImageLink().xcom_key
RETURN_XCOM_KEY = "return_value"
#: Task types (operator class names) of the provider's operators, for task instances that have no
#: link XCom (the task has not ended yet).
MAI_OPERATOR_NAMES = frozenset({"MaiGenerateImageOperator", "MaiEditImageOperator"})
#: Largest image the plugin reads into memory: MAI images are at most one megapixel, a PNG of at
#: most ~4 MB.
MAX_IMAGE_BYTES = 16 * 1024 * 1024
#: Largest sidecar the plugin reads (ours are ~1 KB plus the prompt).
MAX_SIDECAR_BYTES = 256 * 1024
#: Largest result (without its inline image) a page that lists images reads: the fields shown are
#: ~1 KB plus the prompt. A page holds at most (images it shows) x this; a larger result is listed
#: as too large to show, with a link to its own tab.
MAX_LISTED_RESULT_BYTES = 32 * 1024
#: Largest result (without its inline image) read for one task instance's own tab and routes: the
#: service's longest prompt fits.
MAX_RESULT_BYTES = 1024 * 1024
#: Result keys per query (older SQLite builds allow 999 parameters in a statement).
KEYS_PER_QUERY = 250


class ImageUnavailableError(Exception):
    """The image of a result cannot be served; ``status`` is the HTTP answer that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- results, as untrusted input -------------------------------------------------------------------

#: Result fields the pages show, by the type each must have.
_TEXT_FIELDS = ("prompt", "operation", "model", "deployment", "request_id", "source_image", "created_utc")
_COUNT_FIELDS = ("width", "height", "size_bytes")
_WEB_SCHEMES = ("http://", "https://")


def png_uri(value: Any) -> str | None:
    """``value`` when it may be opened as a MAI image: a location whose name ends in ``.png`` (any
    case), not on the web (operators never write there; reading it would make the api-server fetch
    whatever URL a task named). None otherwise."""
    if not isinstance(value, str) or len(value) <= len(".png"):
        return None
    lowered = value.lower()
    if not lowered.endswith(".png") or lowered.startswith(_WEB_SCHEMES):
        return None
    return value


def shown_fields(source: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a result or sidecar the pages show, each of the type they expect (text, a
    positive whole number, ``reused`` true); a field of any other type is left out."""
    fields: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        if isinstance(source.get(name), str):
            fields[name] = source[name]
    for name in _COUNT_FIELDS:
        number = source.get(name)
        if isinstance(number, int) and not isinstance(number, bool) and number > 0:
            fields[name] = number
    if source.get("reused") is True:
        fields["reused"] = True
    disclosure = source.get("disclosure")
    if isinstance(disclosure, str) and disclosure:
        fields["disclosure"] = disclosure
    return fields


def mai_result(value: Any, *, inline: bool | None = None) -> dict[str, Any] | None:
    """A MAI result's fields as the plugin uses them (see :func:`shown_fields`), with ``sha256``,
    ``uri`` (a PNG's, or None) and ``inline`` (whether the image travels in XCom); None when
    ``value`` is not a MAI result: a sha256 of 64 hex digits, and a PNG's ``uri`` or an inline image.

    :param inline: whether the result has an inline image, when ``value`` was read without it.
    """
    if not isinstance(value, Mapping) or not is_sha256(value.get("sha256")):
        return None
    if inline is None:
        encoded = value.get("b64_json")
        inline = isinstance(encoded, str) and bool(encoded)
    uri = value.get("uri")
    if uri not in (None, "") and png_uri(uri) is None:
        return None  # it names something that is not a PNG: never opened, never shown
    if not uri and not inline:
        return None
    return {**shown_fields(value), "sha256": value["sha256"], "uri": uri or None, "inline": not uri}


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


# -- the database ---------------------------------------------------------------------------------


def _xcom_value(value: Any) -> Any:
    """An XCom value as read: most are JSON already; a few were stored as JSON text."""
    from types import SimpleNamespace

    from airflow.models.xcom import XComModel

    return XComModel.deserialize_value(SimpleNamespace(value=value))


def _value_without_image(session: Session) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The XCom value without its ``b64_json``, left out by the database itself (a page never
    carries the megabytes of an image kept in XCom), and that value's size in characters.

    On a database without a known way to leave a field out, the whole value is read (still within
    the byte bound): a result with an inline image is then too large to list.
    """
    from airflow.models.xcom import XComModel
    from sqlalchemy import Text, case, cast, func, literal, type_coerce

    value = XComModel.value
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        without = value.op("-")(cast(literal("b64_json"), Text))  # jsonb - key
        left_out: Any = case((func.jsonb_typeof(value) == "object", without), else_=value)
    elif dialect in ("sqlite", "mysql"):
        left_out = func.json_remove(value, "$.b64_json")
    else:
        left_out = value
    stripped = type_coerce(left_out, value.type)
    return stripped, func.length(cast(stripped, Text))


def _has_inline_image() -> ColumnElement[Any]:
    from airflow.models.xcom import XComModel

    return XComModel.value["b64_json"].as_string().is_not(None)


def _result_keys(session: Session, *conditions: Any, require_link: bool = True) -> list[Row[Any]]:
    """The results (keys and timestamps, no values) matching ``conditions``, of task instances that
    pushed the MAI link (unless ``require_link`` is false), oldest first."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import exists, select
    from sqlalchemy.orm import aliased

    stmt = select(XComModel.dag_run_id, XComModel.task_id, XComModel.map_index, XComModel.timestamp).where(
        XComModel.key == RETURN_XCOM_KEY, *conditions
    )
    if require_link:
        link = aliased(XComModel)
        stmt = stmt.where(
            exists().where(
                link.dag_run_id == XComModel.dag_run_id,
                link.task_id == XComModel.task_id,
                link.map_index == XComModel.map_index,
                link.key == LINK_XCOM_KEY,
            )
        )
    return list(session.execute(stmt.order_by(XComModel.timestamp, XComModel.task_id, XComModel.map_index)))


def _images(
    session: Session, keys: Sequence[Row[Any]], runs: Mapping[int, tuple[str, str]], max_bytes: int
) -> list[TaskImage]:
    """The images of the results at ``keys`` (in their order), each read within ``max_bytes`` and
    without its inline image; ``runs`` names each run (dag_id, run_id) by its primary key. A value
    that is not a MAI result is left out; a larger one is an image whose details are ``unlisted``."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import case, select, tuple_

    stripped, size = _value_without_image(session)
    read: dict[tuple[int, str, int], Row[Any]] = {}
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = [(key.dag_run_id, key.task_id, key.map_index) for key in keys[start : start + KEYS_PER_QUERY]]
        stmt = select(
            XComModel.dag_run_id,
            XComModel.task_id,
            XComModel.map_index,
            size.label("size"),
            case((size <= max_bytes, stripped)).label("value"),
            _has_inline_image().label("inline"),
        ).where(
            XComModel.key == RETURN_XCOM_KEY,
            tuple_(XComModel.dag_run_id, XComModel.task_id, XComModel.map_index).in_(chunk),
        )
        read.update({(row.dag_run_id, row.task_id, row.map_index): row for row in session.execute(stmt)})
    images = []
    for key in keys:
        row = read.get((key.dag_run_id, key.task_id, key.map_index))
        if row is None or row.size is None:
            continue
        dag_id, run_id = runs[key.dag_run_id]
        image = TaskImage(dag_id, run_id, key.task_id, key.map_index, {}, key.timestamp)
        if row.size > max_bytes:
            image.unlisted = f"its result is too large to show here ({row.size:,} characters)"
        else:
            result = mai_result(_xcom_value(row.value), inline=bool(row.inline))
            if result is None:
                continue
            image.result = result
        images.append(image)
    return images


#: How long the list of DAGs with images (the gallery's DAG filter) is reused: it scans one index
#: entry per MAI task instance ever run, so it is not redone for every page view.
DAG_LIST_TTL = 60.0
_dag_list: tuple[float, frozenset[str]] | None = None
_dag_list_lock = threading.Lock()


def dags_with_images(session: Session, readable: Iterable[str]) -> list[str]:
    """The DAGs (among ``readable``) that have at least one MAI task instance that ran (a list at
    most ``DAG_LIST_TTL`` seconds old)."""
    global _dag_list
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    with _dag_list_lock:
        if _dag_list is None or monotonic() - _dag_list[0] > DAG_LIST_TTL:
            stmt = select(XComModel.dag_id).where(XComModel.key == LINK_XCOM_KEY).distinct()
            _dag_list = (monotonic(), frozenset(dag_id for (dag_id,) in session.execute(stmt)))
        with_images = _dag_list[1]
    return sorted(with_images & set(readable))


def recent_runs(
    session: Session,
    readable: Iterable[str],
    *,
    dag_id: str | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 10,
    offset: int = 0,
    images_per_run: int,
) -> tuple[list[RunImages], bool]:
    """The newest runs (by ``run_after``) that have MAI images, with their first
    ``images_per_run`` images; and whether there are more runs. ``until`` is inclusive (the whole
    day, UTC)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    readable = set(readable)
    if dag_id is not None:
        readable &= {dag_id}
    if not readable:
        return [], False
    with_images = select(XComModel.dag_run_id).where(
        XComModel.key == LINK_XCOM_KEY, XComModel.dag_id.in_(readable)
    )
    stmt = select(DagRun.id, DagRun.dag_id, DagRun.run_id, DagRun.run_after, DagRun.state).where(
        DagRun.id.in_(with_images)
    )
    if since is not None:
        stmt = stmt.where(DagRun.run_after >= datetime.combine(since, time.min, tzinfo=timezone.utc))
    if until is not None:
        end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=timezone.utc)
        stmt = stmt.where(DagRun.run_after < end)
    stmt = stmt.order_by(DagRun.run_after.desc(), DagRun.id.desc()).offset(offset).limit(limit + 1)
    rows = session.execute(stmt).all()
    runs = {
        row.id: RunImages(row.dag_id, row.run_id, row.run_after, _state(row.state)) for row in rows[:limit]
    }
    _fill_runs(session, runs, images_per_run)
    return list(runs.values()), len(rows) > limit


def run_images(session: Session, dag_id: str, run_id: str, *, limit: int) -> RunImages | None:
    """One DAG run and its first ``limit`` MAI images; None when there is no such run."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    row = session.execute(
        select(DagRun.id, DagRun.dag_id, DagRun.run_id, DagRun.run_after, DagRun.state).where(
            DagRun.dag_id == dag_id, DagRun.run_id == run_id
        )
    ).first()
    if row is None:
        return None
    run = RunImages(row.dag_id, row.run_id, row.run_after, _state(row.state))
    _fill_runs(session, {row.id: run}, limit)
    return run


def _state(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def _fill_runs(session: Session, runs: Mapping[int, RunImages], per_run: int) -> None:
    """Set each run's first ``per_run`` images (oldest first) and its number of images: the keys
    of every result are read, the values of only those shown."""
    from airflow.models.xcom import XComModel

    if not runs:
        return
    shown: dict[int, list[Row[Any]]] = defaultdict(list)
    for key in _result_keys(session, XComModel.dag_run_id.in_(list(runs))):
        runs[key.dag_run_id].total += 1
        if len(shown[key.dag_run_id]) < per_run:
            shown[key.dag_run_id].append(key)
    names = {pk: (run.dag_id, run.run_id) for pk, run in runs.items()}
    by_name = {name: runs[pk] for pk, name in names.items()}
    keys = [key for chosen in shown.values() for key in chosen]
    for image in _images(session, keys, names, MAX_LISTED_RESULT_BYTES):
        by_name[image.dag_id, image.run_id].images.append(image)


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


def task_instance_images(session: Session, ref: TaskInstanceRef, *, limit: int) -> TaskInstanceImages:
    """The image(s) of one task instance. ``map_index`` -1 on a mapped task means all of its map
    indexes (the tab of a mapped task without an index: its first ``limit`` images, as a list)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    tis = session.execute(
        select(TaskInstance.map_index, TaskInstance.state, TaskInstance.operator).where(
            TaskInstance.dag_id == ref.dag_id,
            TaskInstance.run_id == ref.run_id,
            TaskInstance.task_id == ref.task_id,
        )
    ).all()
    exact = [ti for ti in tis if ti.map_index == ref.map_index]
    mapped = ref.map_index < 0 and not exact and any(ti.map_index >= 0 for ti in tis)
    chosen = [ti for ti in tis if ti.map_index >= 0] if mapped else exact
    if not chosen:
        return TaskInstanceImages(False, False, None, None, [], mapped=False)
    operator = chosen[0].operator
    of_task = (
        XComModel.dag_id == ref.dag_id,
        XComModel.run_id == ref.run_id,
        XComModel.task_id == ref.task_id,
        XComModel.map_index.in_([ti.map_index for ti in chosen]),
    )
    linked = session.execute(
        select(XComModel.map_index).where(*of_task, XComModel.key == LINK_XCOM_KEY).limit(1)
    )
    is_mai_task = linked.first() is not None or operator in MAI_OPERATOR_NAMES
    keys = sorted(
        _result_keys(session, *of_task, require_link=operator not in MAI_OPERATOR_NAMES), key=_map_index
    )
    max_bytes = MAX_LISTED_RESULT_BYTES if mapped else MAX_RESULT_BYTES
    runs = {key.dag_run_id: (ref.dag_id, ref.run_id) for key in keys}
    states = {_state(ti.state) for ti in chosen}
    return TaskInstanceImages(
        exists=True,
        is_mai_task=is_mai_task,
        state=states.pop() if len(states) == 1 else "mixed",
        operator=operator,
        images=_images(session, keys[:limit], runs, max_bytes),
        mapped=mapped,
        total=len(keys),
    )


def _map_index(key: Row[Any]) -> int:
    return int(key.map_index)


def related_images(session: Session, image: TaskImage, *, limit: int) -> list[TaskImage]:
    """The images of ``image``'s run it was edited from or that were edited from it (matched by
    the database on ``uri`` and ``source_image``: the rest of the run is not read)."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import or_

    matches = []
    if image.source_image:
        matches.append(XComModel.value["uri"].as_string() == image.source_image)
    if image.uri:
        matches.append(XComModel.value["source_image"].as_string() == image.uri)
    if not matches:
        return []
    keys = _result_keys(
        session, XComModel.dag_id == image.dag_id, XComModel.run_id == image.run_id, or_(*matches)
    )
    others = [key for key in keys if (key.task_id, key.map_index) != (image.task_id, image.map_index)]
    runs = {key.dag_run_id: (image.dag_id, image.run_id) for key in others}
    return _images(session, others[:limit], runs, MAX_LISTED_RESULT_BYTES)


def task_image(session: Session, ref: TaskInstanceRef) -> TaskImage:
    """The image of one MAI task instance (its result without the inline image).

    :raises ImageUnavailableError: 404 when the task instance has no MAI image, 413 when its result
        is too large.
    """
    from airflow.models.xcom import XComModel

    of_instance = (
        XComModel.dag_id == ref.dag_id,
        XComModel.run_id == ref.run_id,
        XComModel.task_id == ref.task_id,
        XComModel.map_index == ref.map_index,
    )
    keys = _result_keys(session, *of_instance)
    if not keys and _operator(session, ref) in MAI_OPERATOR_NAMES:
        keys = _result_keys(session, *of_instance, require_link=False)
    images = _images(
        session, keys, {key.dag_run_id: (ref.dag_id, ref.run_id) for key in keys}, MAX_RESULT_BYTES
    )
    if not images:
        raise ImageUnavailableError(
            404, f"{ref.task_id} (map index {ref.map_index}) of {ref.run_id} has no MAI image"
        )
    (image,) = images
    if image.unlisted:
        raise ImageUnavailableError(413, f"{ref.label} of {ref.run_id}: {image.unlisted}")
    return image


def _operator(session: Session, ref: TaskInstanceRef) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    return session.scalar(
        select(TaskInstance.operator).where(
            TaskInstance.dag_id == ref.dag_id,
            TaskInstance.run_id == ref.run_id,
            TaskInstance.task_id == ref.task_id,
            TaskInstance.map_index == ref.map_index,
        )
    )


def _inline_image(session: Session, image: TaskImage, limit: int) -> bytes:
    """The inline image (``b64_json``) of a result, decoded; its length is checked by the database
    before it is read."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import case, func, select

    encoded = XComModel.value["b64_json"].as_string()
    max_chars = (limit + 2) // 3 * 4
    row = session.execute(
        select(
            func.length(encoded).label("length"),
            case((func.length(encoded) <= max_chars, encoded)).label("b64"),
        ).where(
            XComModel.key == RETURN_XCOM_KEY,
            XComModel.dag_id == image.dag_id,
            XComModel.run_id == image.run_id,
            XComModel.task_id == image.task_id,
            XComModel.map_index == image.map_index,
        )
    ).first()
    if row is None or not row.length:
        raise ImageUnavailableError(404, f"{image.label} has no image in its XCom")
    if row.b64 is None:
        raise ImageUnavailableError(413, f"the inline image is larger than {limit} bytes")
    try:
        return base64.b64decode(str(row.b64), validate=True)
    except (binascii.Error, ValueError):
        raise ImageUnavailableError(502, "the inline image (b64_json) is not valid base64") from None


# -- storage ---------------------------------------------------------------------------------------


def read_image(session: Session, image: TaskImage, *, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The PNG of an image, from its ``uri`` (through ObjectStoragePath) or from its XCom's
    ``b64_json``, checked against the result's sha256.

    :raises ImageUnavailableError: gone (404), too large (413), changed since the run (409),
        unreadable (502).
    """
    uri = png_uri(image.uri)
    data = _read_bounded(uri, limit, what="image") if uri else _inline_image(session, image, limit)
    if hashlib.sha256(data).hexdigest() != image.result.get("sha256"):
        where = uri or "the XCom"
        raise ImageUnavailableError(
            409, f"the image at {where} has changed since this task ran (its sha256 differs)"
        )
    return data


def _read_bounded(uri: str, limit: int, *, what: str) -> bytes:
    from airflow_provider_mai.storage import open_location

    try:
        # open_location, as the operators wrote it: a local path stays literal ('?' and '#' included).
        with open_location(uri).open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ImageUnavailableError(404, f"the {what} is no longer at {uri}") from None
    except Exception as exc:
        # Store errors can be long and name internals: the log keeps them, the page says where.
        log.warning("Cannot read the MAI %s at %s: %s", what, uri, exc)
        raise ImageUnavailableError(
            502, f"cannot read the {what} at {uri} ({type(exc).__name__}; see the api-server log)"
        ) from None
    if len(data) > limit:
        raise ImageUnavailableError(413, f"the {what} at {uri} is larger than {limit} bytes")
    return data


class _SidecarCache:
    """Sidecars already read, by (sidecar location, image sha256): bounded, least recently used out."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


_sidecars = _SidecarCache()


def read_sidecar(image: TaskImage) -> dict[str, Any] | None:
    """The image's provenance sidecar (the JSON beside its PNG), or None when it has none (an
    XCom-only image). Only a sidecar whose own ``sha256`` is the image's is returned.

    Not ``storage.read_sidecar`` (the operators' reuse check, for which any problem just means
    "no reusable image"): a page must say why there is no sidecar - gone, too large, unreadable,
    not JSON, or describing another image - as the HTTP status of :class:`ImageUnavailableError`.

    :raises ImageUnavailableError: 404 gone, 413 too large, 502 unreadable or not a JSON object,
        409 it does not describe this image (its content is not returned).
    """
    location = image.sidecar_uri
    if location is None:
        return None
    sha256 = str(image.result["sha256"])
    cached = _sidecars.get((location, sha256))
    if cached is not None:
        return cached
    raw = _read_bounded(location, MAX_SIDECAR_BYTES, what="sidecar")
    try:
        sidecar = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ImageUnavailableError(502, f"the sidecar at {location} is not JSON") from None
    if not isinstance(sidecar, dict):
        raise ImageUnavailableError(502, f"the sidecar at {location} is not a JSON object")
    if sidecar.get("sha256") != sha256:
        raise ImageUnavailableError(
            409,
            f"the file at {location} does not describe this image (its sha256 is not the image's): not shown",
        )
    _sidecars.put((location, sha256), sidecar)
    return sidecar


def attach_sidecar(image: TaskImage) -> None:
    """Read the image's sidecar into ``sidecar``, or why it cannot be shown into ``sidecar_error``."""
    try:
        image.sidecar = read_sidecar(image)
    except ImageUnavailableError as exc:
        image.sidecar_error = exc.message
