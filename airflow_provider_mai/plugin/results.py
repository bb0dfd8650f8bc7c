"""MAI results as the api-server sees them: XCom rows in the metadata database, images in storage.

A task instance's image is found through its XCom ``return_value`` (a plain dict: ``uri``,
``b64_json``, ``sha256``, ``prompt``...). A task counts as a MAI task when it pushed the
``MaiImageLink`` extra link (every MAI operator does, at task end) or when its operator is one of
ours; a look-alike dict returned by any other task is not shown. Images are read only from the
location the XCom names - never from a location a request names - and checked against the
XCom's sha256, so a file overwritten since the run is reported, not shown as that run's image.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from time import monotonic
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.links import MaiImageLink, content_tag, image_query

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: XCom key of the "MAI image" extra link: pushed at the end of every MAI operator task instance.
LINK_XCOM_KEY = MaiImageLink().xcom_key
RETURN_XCOM_KEY = "return_value"
#: Task types (operator class names) of the provider's operators, for task instances that have no
#: link XCom (the task has not ended yet).
MAI_OPERATOR_NAMES = frozenset({"MaiGenerateImageOperator", "MaiEditImageOperator"})
#: Largest image the plugin reads into memory (the service's answers are ~1-3 MB).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: Largest sidecar the plugin reads (ours are ~1 KB).
MAX_SIDECAR_BYTES = 256 * 1024
#: Sidecars read at once for one page (object stores answer in parallel; a bound keeps the
#: api-server's thread pool and the store's connection pool from being flooded).
SIDECAR_READERS = 8


class ImageUnavailableError(Exception):
    """The image of a result cannot be served; ``status`` is the HTTP answer that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_mai_result(value: Any) -> bool:
    """Whether an XCom value has the shape of a MAI operator's result."""
    if not isinstance(value, Mapping):
        return False
    has_image = isinstance(value.get("uri"), str) or isinstance(value.get("b64_json"), str)
    return has_image and isinstance(value.get("sha256"), str)


@dataclass
class TaskImage:
    """One task instance's image: what its XCom says, plus its sidecar once read."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    result: dict[str, Any]
    recorded_at: datetime | None = None
    sidecar: dict[str, Any] | None = None
    sidecar_error: str | None = None
    derived: list[TaskImage] = field(default_factory=list)
    source: TaskImage | None = None

    @property
    def query(self) -> str:
        """The query string that names this image in every plugin route."""
        return image_query(self.dag_id, self.run_id, self.task_id, self.map_index)

    @property
    def version(self) -> str:
        """The content tag for this image's URLs: a re-run's new image gets new URLs."""
        return content_tag(str(self.result["sha256"]))

    @property
    def label(self) -> str:
        """``task`` or ``task[3]`` for a mapped task instance."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"

    @property
    def uri(self) -> str | None:
        uri = self.result.get("uri")
        return uri if isinstance(uri, str) and uri else None

    @property
    def sidecar_uri(self) -> str | None:
        """Where the sidecar lives: the XCom's ``sidecar_uri``, else beside the PNG."""
        recorded = self.result.get("sidecar_uri")
        if isinstance(recorded, str) and recorded:
            return recorded
        if self.uri is None:
            return None
        from airflow_provider_mai.storage import open_location, sidecar_path

        return str(sidecar_path(open_location(self.uri)))

    def get(self, key: str) -> Any:
        """A field of the result, else of the sidecar (e.g. ``created_utc``, ``operation``)."""
        value = self.result.get(key)
        if value is None and self.sidecar is not None:
            value = self.sidecar.get(key)
        return value

    @property
    def operation(self) -> str | None:
        return self.get("operation")

    @property
    def source_image(self) -> str | None:
        return self.get("source_image")

    @property
    def created(self) -> str | None:
        """When the image was made (sidecar), else when its XCom was written."""
        created = self.get("created_utc")
        if created:
            return str(created)
        return self.recorded_at.isoformat(timespec="seconds") if self.recorded_at else None

    @property
    def disclosure(self) -> str:
        from airflow_provider_mai.models import AI_DISCLOSURE

        return str(self.get("disclosure") or AI_DISCLOSURE)

    def display_size(self, box: int) -> tuple[int, int]:
        """The image's size scaled to fit a ``box`` x ``box`` square (for width/height attributes)."""
        width, height = int(self.result.get("width") or box), int(self.result.get("height") or box)
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
    #: How many images the run has when ``images`` holds only the first of them.
    total: int = 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.images)

    def keep_first(self, count: int) -> None:
        """Keep the run's first ``count`` images (a page shows a bounded number)."""
        self.total = len(self.images)
        self.images = self.images[:count]

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
    """Set ``source``/``derived`` for edits whose input (sidecar ``source_image``) is in ``images``."""
    by_uri = {image.uri: image for image in images if image.uri}
    for image in images:
        image.source, image.derived = None, []
    for image in images:
        parent = by_uri.get(image.source_image or "")
        if parent is not None and parent is not image:
            image.source = parent
            parent.derived.append(image)


# -- the database ---------------------------------------------------------------------------------


def _xcom_value(row: Any) -> Any:
    from airflow.models.xcom import XComModel

    return XComModel.deserialize_value(row)


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
) -> tuple[list[RunImages], bool]:
    """The newest runs (by ``run_after``) that have MAI images, with their images; and whether
    there are more. ``until`` is inclusive (the whole day, UTC)."""
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
    more = len(rows) > limit
    runs = {
        row.id: RunImages(row.dag_id, row.run_id, row.run_after, _state(row.state)) for row in rows[:limit]
    }
    for run_pk, images in _images_of_runs(session, runs).items():
        runs[run_pk].images = images
    return list(runs.values()), more


def run_images(session: Session, dag_id: str, run_id: str) -> RunImages | None:
    """One DAG run and its MAI images; None when there is no such run."""
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
    run.images = _images_of_runs(session, {row.id: run}).get(row.id, [])
    return run


def _state(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def _images_of_runs(session: Session, runs: Mapping[int, RunImages]) -> dict[int, list[TaskImage]]:
    """The MAI images of the given runs (by DagRun primary key), oldest first in each run."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    if not runs:
        return {}
    marked = {
        (row.dag_run_id, row.task_id, row.map_index)
        for row in session.execute(
            select(XComModel.dag_run_id, XComModel.task_id, XComModel.map_index).where(
                XComModel.dag_run_id.in_(list(runs)), XComModel.key == LINK_XCOM_KEY
            )
        )
    }
    if not marked:
        return {}
    rows = session.execute(
        select(
            XComModel.dag_run_id, XComModel.task_id, XComModel.map_index, XComModel.value, XComModel.timestamp
        ).where(
            XComModel.dag_run_id.in_({pk for pk, _, _ in marked}),
            XComModel.task_id.in_({task for _, task, _ in marked}),
            XComModel.key == RETURN_XCOM_KEY,
        )
    )
    found: dict[int, list[TaskImage]] = defaultdict(list)
    for row in rows:
        if (row.dag_run_id, row.task_id, row.map_index) not in marked:
            continue
        value = _xcom_value(row)
        if not is_mai_result(value):
            continue
        run = runs[row.dag_run_id]
        found[row.dag_run_id].append(
            TaskImage(run.dag_id, run.run_id, row.task_id, row.map_index, _metadata(value), row.timestamp)
        )
    for images in found.values():
        images.sort(key=lambda image: (image.recorded_at or datetime.min, image.task_id, image.map_index))
    return found


def _metadata(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without its inline image (pages need the fields, not the megabytes)."""
    meta = {key: value for key, value in result.items() if key != "b64_json"}
    meta["inline"] = bool(result.get("b64_json"))
    return meta


@dataclass
class TaskInstanceImages:
    """What a task instance's tab shows: whether it is a MAI task, its state, and its image(s)."""

    exists: bool
    is_mai_task: bool
    state: str | None
    operator: str | None
    images: list[TaskImage]
    mapped: bool


def task_instance_images(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> TaskInstanceImages:
    """The image(s) of one task instance. ``map_index`` -1 on a mapped task means all of its map
    indexes (the tab of a mapped task without an index)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    tis = session.execute(
        select(TaskInstance.map_index, TaskInstance.state, TaskInstance.operator).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
        )
    ).all()
    exact = [ti for ti in tis if ti.map_index == map_index]
    mapped = map_index < 0 and not exact and any(ti.map_index >= 0 for ti in tis)
    chosen = [ti for ti in tis if ti.map_index >= 0] if mapped else exact
    if not chosen:
        return TaskInstanceImages(False, False, None, None, [], mapped=False)
    indexes = [ti.map_index for ti in chosen]
    rows = session.execute(
        select(XComModel.map_index, XComModel.key, XComModel.value, XComModel.timestamp).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.map_index.in_(indexes),
            XComModel.key.in_([RETURN_XCOM_KEY, LINK_XCOM_KEY]),
        )
    ).all()
    linked = any(row.key == LINK_XCOM_KEY for row in rows)
    operator = chosen[0].operator
    images = []
    for row in sorted((row for row in rows if row.key == RETURN_XCOM_KEY), key=lambda row: row.map_index):
        value = _xcom_value(row)
        if is_mai_result(value):
            images.append(TaskImage(dag_id, run_id, task_id, row.map_index, _metadata(value), row.timestamp))
    states = {_state(ti.state) for ti in chosen}
    return TaskInstanceImages(
        exists=True,
        is_mai_task=linked or operator in MAI_OPERATOR_NAMES,
        state=states.pop() if len(states) == 1 else "mixed",
        operator=operator,
        images=images,
        mapped=mapped,
    )


def task_result(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
    """The full result (with any inline image) of a MAI task instance.

    :raises ImageUnavailableError: 404 when the task instance has no MAI image.
    """
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.execute(
        select(XComModel.key, XComModel.value).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.map_index == map_index,
            XComModel.key.in_([RETURN_XCOM_KEY, LINK_XCOM_KEY]),
        )
    ).all()
    values = {row.key: row for row in rows}
    if RETURN_XCOM_KEY in values and (
        LINK_XCOM_KEY in values
        or _operator(session, dag_id, run_id, task_id, map_index) in MAI_OPERATOR_NAMES
    ):
        value = _xcom_value(values[RETURN_XCOM_KEY])
        if is_mai_result(value):
            return dict(value)
    raise ImageUnavailableError(404, f"{task_id} (map index {map_index}) of {run_id} has no MAI image")


def _operator(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    return session.scalar(
        select(TaskInstance.operator).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == map_index,
        )
    )


# -- storage ---------------------------------------------------------------------------------------


def read_image(result: Mapping[str, Any], *, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The PNG of a result, from its ``uri`` (through ObjectStoragePath) or its ``b64_json``,
    checked against the result's sha256.

    :raises ImageUnavailableError: gone (404), too large (413), changed since the run (409),
        unreadable (502).
    """
    uri = result.get("uri")
    if isinstance(uri, str) and uri:
        data = _read_bounded(uri, limit, what="image")
    else:
        encoded = str(result.get("b64_json") or "")
        if len(encoded) * 3 // 4 > limit:
            raise ImageUnavailableError(413, f"the inline image is larger than {limit} bytes")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageUnavailableError(502, "the inline image (b64_json) is not valid base64") from None
    if hashlib.sha256(data).hexdigest() != result.get("sha256"):
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
    """The image's provenance sidecar (JSON), or None when it has none (an XCom-only image).

    :raises ImageUnavailableError: the sidecar is gone, too large, unreadable or not a JSON object.
    """
    location = image.sidecar_uri
    if location is None:
        return None
    key = (location, str(image.result["sha256"]))
    cached = _sidecars.get(key)
    if cached is not None:
        return cached
    raw = _read_bounded(location, MAX_SIDECAR_BYTES, what="sidecar")
    try:
        sidecar = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ImageUnavailableError(502, f"the sidecar at {location} is not JSON") from None
    if not isinstance(sidecar, dict):
        raise ImageUnavailableError(502, f"the sidecar at {location} is not a JSON object")
    # Only a sidecar describing this very image is cached (and so reused for it).
    if sidecar.get("sha256") == image.result["sha256"]:
        _sidecars.put(key, sidecar)
    return sidecar


def attach_sidecars(images: Sequence[TaskImage]) -> None:
    """Read the sidecars of ``images`` (in parallel, bounded); a failure is kept per image."""

    def attach(image: TaskImage) -> None:
        try:
            image.sidecar = read_sidecar(image)
        except ImageUnavailableError as exc:
            image.sidecar_error = exc.message

    pending = [image for image in images if image.sidecar is None and image.sidecar_error is None]
    if len(pending) <= 1:
        for image in pending:
            attach(image)
        return
    with ThreadPoolExecutor(max_workers=min(SIDECAR_READERS, len(pending))) as pool:
        list(pool.map(attach, pending))
