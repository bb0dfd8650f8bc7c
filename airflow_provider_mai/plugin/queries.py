"""The plugin's SQL: MAI results (XCom rows), the runs and task instances they belong to.

Every query reads keys first and values only for the images a page shows, each value within a byte
bound and without its inline image (:mod:`.trust` says why).
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone
from time import monotonic
from typing import TYPE_CHECKING, Any

from airflow_provider_mai.plugin.trust import (
    KEYS_PER_QUERY,
    LINK_XCOM_KEY,
    MAI_OPERATOR_NAMES,
    MAX_LISTED_RESULT_BYTES,
    MAX_RESULT_BYTES,
    RETURN_XCOM_KEY,
    ImageUnavailableError,
    mai_result,
)
from airflow_provider_mai.plugin.views import (
    Located,
    ResultKey,
    RunImages,
    TaskImage,
    TaskInstanceImages,
    TaskInstanceRef,
    paginate,
    pair_up,
    sources_of,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Row
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import ColumnElement


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


#: Longest location (``uri``, ``source_image``) read to pair an edit with its source: ours are a
#: few hundred characters; a longer one is not paired (its image still shows, alone), so listing a
#: run's keys costs at most this much per result whatever a task returned.
MAX_LOCATION_CHARS = 1024


def _result_keys(
    session: Session, *conditions: Any, require_link: bool = True, located: bool = False
) -> list[ResultKey]:
    """The results (keys and timestamps, no values) matching ``conditions``, of task instances that
    pushed the MAI link (unless ``require_link`` is false), oldest first; with ``located``, also
    each one's ``uri``, ``source_image`` and ``operation`` (each within ``MAX_LOCATION_CHARS``:
    what pairs edits with their sources)."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import case, exists, func, literal, select
    from sqlalchemy.orm import aliased

    def bounded(name: str) -> Any:
        text = XComModel.value[name].as_string()
        return case((func.length(text) <= MAX_LOCATION_CHARS, text)) if located else literal(None)

    stmt = select(
        XComModel.dag_run_id,
        XComModel.task_id,
        XComModel.map_index,
        XComModel.timestamp,
        bounded("uri").label("uri"),
        bounded("source_image").label("source_image"),
        bounded("operation").label("operation"),
    ).where(XComModel.key == RETURN_XCOM_KEY, *conditions)
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
    rows = session.execute(stmt.order_by(XComModel.timestamp, XComModel.task_id, XComModel.map_index))
    return [
        ResultKey(
            row.dag_run_id,
            row.task_id,
            row.map_index,
            row.timestamp,
            *(text if isinstance(text, str) else None for text in (row.uri, row.source_image, row.operation)),
        )
        for row in rows
    ]


def _images(
    session: Session, keys: Sequence[ResultKey], runs: Mapping[int, tuple[str, str]], max_bytes: int
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
        image = TaskImage(dag_id, run_id, key.task_id, key.map_index, {}, key.recorded_at)
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


def run_images(
    session: Session, dag_id: str, run_id: str, *, per_page: int, page: int = 1
) -> RunImages | None:
    """One DAG run and page ``page`` of its MAI images (``per_page`` a page, see
    :func:`_fill_runs`); None when there is no such run. A page past the run's last one holds no
    images (``page > pages``)."""
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
    _fill_runs(session, {row.id: run}, per_page, page)
    return run


def _state(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def _fill_runs(session: Session, runs: Mapping[int, RunImages], per_page: int, page: int = 1) -> None:
    """Set each run's counts and its page ``page`` of images, grouped (:func:`.views.pair_up`: an
    image, then the edits made from it) and laid out ``per_page`` images a page
    (:func:`.views.paginate`). One query reads the keys and locations of every result of the
    runs; the values are read for the images shown only (one query per ``KEYS_PER_QUERY``)."""
    from airflow.models.xcom import XComModel

    if not runs:
        return
    of_run: dict[int, list[ResultKey]] = defaultdict(list)
    for key in _result_keys(session, XComModel.dag_run_id.in_(list(runs)), located=True):
        of_run[key.dag_run_id].append(key)
    layouts: dict[int, list[list[ResultKey]]] = {}
    parent_keys: dict[tuple[int, str, int], ResultKey] = {}
    for pk, run in runs.items():
        keys = of_run.get(pk, [])
        groups = pair_up(keys)
        pages = paginate(groups, per_page) or [[]]
        run.total, run.group_total = len(keys), len(groups)
        run.edited = sum(key.operation == "edit" for key in keys)
        run.generated = sum(key.operation == "generate" for key in keys)
        run.pair_total = sum(len(group) > 1 for group in groups)
        run.page, run.pages = page, len(pages)
        if page > len(pages):
            continue
        starts = {id(group[0]) for group in groups}
        earlier = [part for parts in pages[: page - 1] for part in parts]
        shown = pages[page - 1]
        run.first_image = sum(len(part) for part in earlier) + 1 if shown else 0
        run.last_image = run.first_image + sum(len(part) for part in shown) - 1 if shown else 0
        begun = sum(id(part[0]) in starts for part in earlier)
        run.first_group = begun + (1 if shown and id(shown[0][0]) in starts else 0)
        run.last_group = begun + sum(id(part[0]) in starts for part in shown)
        layouts[pk] = shown
        for index, parent in sources_of(keys).items():
            parent_keys[_key_id(keys[index])] = keys[parent]
    names = {pk: (run.dag_id, run.run_id) for pk, run in runs.items()}
    chosen = [key for parts in layouts.values() for part in parts for key in part]
    by_name = {name: pk for pk, name in names.items()}
    read = {
        (by_name[image.dag_id, image.run_id], image.task_id, image.map_index): image
        for image in _images(session, chosen, names, MAX_LISTED_RESULT_BYTES)
    }
    for pk, parts in layouts.items():
        dag_id, run_id = names[pk]
        shown_groups = [[read[_key_id(key)] for key in part if _key_id(key) in read] for part in parts]
        runs[pk].groups = [group for group in shown_groups if group]
        for image in runs[pk].images:
            source = parent_keys.get((pk, image.task_id, image.map_index))
            if source is not None:  # a bare reference when the source is not on this page
                image.source = read.get(_key_id(source)) or TaskInstanceRef(
                    dag_id, run_id, source.task_id, source.map_index
                )


def _key_id(key: ResultKey) -> tuple[int, str, int]:
    return key.dag_run_id, key.task_id, key.map_index


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


def _map_index(key: ResultKey) -> int:
    return int(key.map_index)


def related_images(session: Session, image: TaskImage, *, limit: int) -> list[TaskImage]:
    """The images of ``image``'s run it was edited from or that were edited from it, paired as the
    gallery pairs them (:func:`.views.sources_of`): the keys and locations of the run's results
    are read, the values of the related ones only."""
    from airflow.models.xcom import XComModel

    keys = _result_keys(
        session, XComModel.dag_id == image.dag_id, XComModel.run_id == image.run_id, located=True
    )
    others = [key for key in keys if (key.task_id, key.map_index) != (image.task_id, image.map_index)]
    items: list[Located] = [image, *others]
    parents = sources_of(items)
    related = [
        key for index, key in enumerate(others, 1) if parents.get(index) == 0 or parents.get(0) == index
    ]
    runs = {key.dag_run_id: (image.dag_id, image.run_id) for key in related}
    return _images(session, related[:limit], runs, MAX_LISTED_RESULT_BYTES)


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


def inline_image(session: Session, image: TaskImage, limit: int) -> bytes:
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
