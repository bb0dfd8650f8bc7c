"""The plugin's FastAPI app, mounted by the api-server under ``/mai``.

Every route needs a logged-in user (Airflow's ``GetUserDep``) and read access to the XComs of the
DAG whose images it serves (``requires_access_dag``, the same rule as Airflow's own XCom API); the
gallery lists only the DAGs the user may read. Routes are plain ``def``: FastAPI runs them in its
thread pool, so reading an image from a bucket never stalls the api-server's event loop. All links
in the pages are relative (every page sits directly under the mount point), so the plugin works
behind a proxy prefix; the login cookie travels with the iframe and its ``<img>`` requests.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import airflow_provider_mai.plugin.queries as queries  # (not via the package: no import circle)
import airflow_provider_mai.plugin.reads as reads
from airflow_provider_mai.links import DEFAULT_THUMBNAIL_SIZE, THUMBNAIL_SIZES, content_tag
from airflow_provider_mai.plugin.thumbnails import (
    ThumbnailCache,
    ThumbnailsBusyError,
    ThumbnailsUnavailableError,
    cache_from_config,
    make_thumbnails,
    pillow_available,
)
from airflow_provider_mai.plugin.trust import ImageUnavailableError
from airflow_provider_mai.plugin.views import RunImages, TaskImage, TaskInstanceRef, link_sources
from airflow_provider_mai.storage import location_key

if TYPE_CHECKING:
    from jinja2 import Environment

#: Runs on one gallery page, and images shown per run there: a page of the run, its edits beside
#: their sources (``gallery?dag_id=&run_id=&page=`` shows its other pages).
RUNS_PER_PAGE = 10
IMAGES_PER_RUN_IN_GALLERY = 12
#: Images on one page of a run's or task's tab (a mapped task can have thousands of map indexes).
#: A page reads at most this many results, each within ``MAX_LISTED_RESULT_BYTES``.
MAX_IMAGES_PER_PAGE = 500
#: Browser caching: a URL carrying the image's content tag (``v=``, its sha256's start) names that
#: image for good; without it, the browser revalidates (ETag) so a re-run's image is never stale.
IMMUTABLE = "private, max-age=604800, immutable"
REVALIDATE = "private, no-cache"
#: The pages load nothing from elsewhere; their one inline script and style are static text.
PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def page_headers(nonce: str) -> dict[str, str]:
    """A page's headers: its one script runs by a per-response nonce (no inline script else)."""
    csp = (
        f"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
    )
    return {"Content-Security-Policy": csp, **PAGE_HEADERS}


def _nonce() -> str:
    import secrets

    return secrets.token_urlsafe(18)


#: Bounds of the query parameters (out of them: a 400 that says so, never a 500).
MAX_MAP_INDEX = 2**31 - 1
EARLIEST_DATE, LATEST_DATE = date(1970, 1, 1), date(9000, 12, 31)
_UNFILLED_PLACEHOLDER = re.compile(r"^\{[A-Z_]+\}$")

XComReadAccess = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.XCOM))


def parse_map_index(value: str | None) -> int:
    """``map_index`` as the UI sends it: a number, or ``{MAP_INDEX}`` literally (unmapped task) -> -1."""
    if value is None or value == "" or _UNFILLED_PLACEHOLDER.match(value):
        return -1
    try:
        index = int(value)
    except ValueError:
        raise HTTPException(400, f"map_index must be a whole number; got {value!r}") from None
    if index < -1:
        raise HTTPException(400, f"map_index must be -1 or more; got {index}")
    if index > MAX_MAP_INDEX:  # the database's column is a 32-bit integer
        raise HTTPException(400, f"map_index must be at most {MAX_MAP_INDEX}; got {index}")
    return index


def _parse_date(name: str, value: str | None) -> date | None:
    if not value:
        return None
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a date like 2026-11-29; got {value!r}") from None
    if not EARLIEST_DATE <= parsed <= LATEST_DATE:  # 9999-12-31 + 1 day would overflow
        raise HTTPException(400, f"{name} must be between {EARLIEST_DATE} and {LATEST_DATE}; got {value}")
    return parsed


MapIndex = Annotated[str | None, Query(description="The map index; -1 or the literal {MAP_INDEX}: unmapped")]
#: Airflow's ids are at most 250 characters (its columns' length); a page number at most 100,000.
MAX_ID_LENGTH = 250
MAX_PAGE = 100_000
Page = Annotated[int, Query(ge=1, le=MAX_PAGE, description="The page, from 1")]
OptionalId = Annotated[str | None, Query(max_length=MAX_ID_LENGTH)]


@lru_cache(maxsize=1)
def _templates() -> Environment:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("airflow_provider_mai.plugin", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    nonce = _nonce()
    html = _templates().get_template(template).render(thumbnails=pillow_available(), nonce=nonce, **context)
    return HTMLResponse(html, status_code=status, headers=page_headers(nonce))


@lru_cache(maxsize=1)
def thumbnail_cache() -> ThumbnailCache:
    """The api-server process's thumbnail cache (one per worker process)."""
    return cache_from_config()


router = APIRouter()


@router.get("/gallery", response_class=HTMLResponse, dependencies=[XComReadAccess])
def gallery(
    user: GetUserDep,
    session: SessionDep,
    dag_id: OptionalId = None,
    run_id: OptionalId = None,
    since: str | None = None,
    until: str | None = None,
    page: Page = 1,
) -> HTMLResponse:
    """Recent runs of every readable DAG with MAI tasks, each with a page of its images as
    thumbnails; with ``run_id`` (and ``dag_id``), page ``page`` of that run's images."""
    from airflow.api_fastapi.app import get_auth_manager

    since_date, until_date = _parse_date("since", since), _parse_date("until", until)
    readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    context: dict[str, Any] = {
        "title": "MAI images",
        "dag_ids": queries.dags_with_images(session, readable),
        "dag_id": dag_id or "",
        "since": since,
        "until": until,
        "previous_page": None,
        "next_page": None,
        "one_run": None,
    }
    if run_id:
        if not dag_id:
            raise HTTPException(400, "run_id needs dag_id: a run id names a run of one DAG")
        if since or until:
            raise HTTPException(400, "since and until choose runs: leave them out with run_id (one run)")
        run = _run_page(session, dag_id, run_id, page, IMAGES_PER_RUN_IN_GALLERY)
        context["one_run"] = urlencode({"dag_id": dag_id})
        return _page("gallery.html", runs=[run], **context)
    runs, more = queries.recent_runs(
        session,
        readable,
        dag_id=dag_id or None,
        since=since_date,
        until=until_date,
        limit=RUNS_PER_PAGE,
        offset=(page - 1) * RUNS_PER_PAGE,
        images_per_run=IMAGES_PER_RUN_IN_GALLERY,
    )

    def page_query(number: int) -> str:
        kept = {"dag_id": dag_id or "", "since": since or "", "until": until or ""}
        return urlencode({**{k: v for k, v in kept.items() if v}, "page": number})

    context["previous_page"] = page_query(page - 1) if page > 1 else None
    context["next_page"] = page_query(page + 1) if more else None
    return _page("gallery.html", runs=runs, **context)


@router.get("/run", response_class=HTMLResponse, dependencies=[XComReadAccess])
def run_tab(
    dag_id: Annotated[str, Query(max_length=MAX_ID_LENGTH)],
    run_id: Annotated[str, Query(max_length=MAX_ID_LENGTH)],
    session: SessionDep,
    page: Page = 1,
) -> HTMLResponse:
    """The DAG run tab: the MAI images of one run (a page of them), edits beside their sources."""
    run = _run_page(session, dag_id, run_id, page, MAX_IMAGES_PER_PAGE)
    return _page("run.html", title=f"MAI images of {run_id}", run=run)


def _run_page(session: Any, dag_id: str, run_id: str, page: int, per_page: int) -> RunImages:
    """Page ``page`` of a run's images; 404 when there is no such run or page."""
    run = queries.run_images(session, dag_id, run_id, per_page=per_page, page=page)
    if run is None:
        raise HTTPException(404, f"DAG {dag_id} has no run {run_id}")
    if page > run.pages:
        raise HTTPException(
            404,
            f"run {run_id} has {run.pages} page{'s' if run.pages != 1 else ''} of images "
            f"({per_page} images a page): there is no page {page}",
        )
    return run


def task_instance_ref(dag_id: str, run_id: str, task_id: str, map_index: MapIndex = None) -> TaskInstanceRef:
    """The query parameters every image route takes (``dag_id`` is also what the auth check reads)."""
    return TaskInstanceRef(dag_id, run_id, task_id, parse_map_index(map_index))


TaskInstanceDep = Annotated[TaskInstanceRef, Depends(task_instance_ref)]

#: Why a MAI task instance has no image, by its state.
_NO_IMAGE_BECAUSE = {
    "failed": "the task failed, so it made no image: see its logs",
    "upstream_failed": "an upstream task failed, so this one did not run",
    "skipped": "the task was skipped",
    "removed": "the task was removed from the DAG",
}


def dag_reader(user: GetUserDep) -> reads.DagReader:
    """Whether the signed-in user may read a DAG's XComs (the rule of the routes' own check), for
    the DAG of the task that wrote an image a result names (it may be another DAG's)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    manager = get_auth_manager()

    @lru_cache(maxsize=64)  # one request's answers: a page asks about the same DAG many times
    def may_read(dag_id: str) -> bool:
        return bool(
            manager.is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.XCOM, details=DagDetails(id=dag_id), user=user
            )
        )

    return may_read


DagReaderDep = Annotated[reads.DagReader, Depends(dag_reader)]


@router.get("/ti", response_class=HTMLResponse, dependencies=[XComReadAccess])
def task_instance_tab(ti: TaskInstanceDep, session: SessionDep, may_read: DagReaderDep) -> HTMLResponse:
    """The task instance tab: its image full size with every detail and its sidecar - or a plain
    sentence saying why there is none (not a MAI task, not finished, failed)."""
    found = queries.task_instance_images(session, ti, limit=MAX_IMAGES_PER_PAGE)
    context: dict[str, Any] = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "run_query": urlencode({"dag_id": ti.dag_id, "run_id": ti.run_id}),
        "image": None,
        "images": [],
    }

    def notice(
        reason: str, title: str, message: str, *, status: int = 200, warn: bool = False
    ) -> HTMLResponse:
        return _page(
            "task_instance.html", status, title=title, reason=reason, warn=warn, message=message, **context
        )

    if not found.exists:
        message = f"There is no task instance {ti.label} in run {ti.run_id} of DAG {ti.dag_id}."
        return notice("missing", "No such task instance", message, status=404, warn=True)
    if not found.is_mai_task:
        operator = f" (a {found.operator})" if found.operator else ""
        message = (
            f"{ti.label}{operator} is not a MAI image task: this tab shows the images made by "
            "MaiGenerateImageOperator and MaiEditImageOperator tasks."
        )
        return notice("not-mai", f"{ti.label}: not a MAI task", message)
    if not found.images:
        state = found.state or "not started"
        why = _NO_IMAGE_BECAUSE.get(
            state, f"the task has not finished yet (it is {state}); the image appears when it ends"
        )
        message = f"No image for {ti.label}: {why}."
        return notice(f"no-image-{state}", f"{ti.label}: no image", message, warn=state in _NO_IMAGE_BECAUSE)
    if found.mapped:
        context.update(images=found.images, total=found.total)
        return _page("task_instance.html", title=f"MAI images of {ti.task_id}", **context)
    (image,) = found.images
    context["image"] = image
    if not image.unlisted:
        # Its sidecar (shown in full), then the images of its run it was edited from or into.
        reads.attach_sidecar(image, may_read)
        link_sources([image, *queries.related_images(session, image, limit=MAX_IMAGES_PER_PAGE)])
    return _page("task_instance.html", title=f"MAI image of {ti.label}", **context)


@router.get("/image", dependencies=[XComReadAccess])
def full_image(
    request: Request, ti: TaskInstanceDep, session: SessionDep, may_read: DagReaderDep, download: bool = False
) -> Response:
    """The full-size PNG, checked against the sha256 its task recorded."""
    image, headers, not_modified = _image_versioned(request, session, ti)
    if not_modified is not None:
        return not_modified
    png = _png_or_error(session, image, may_read)
    disposition = "attachment" if download else "inline"
    headers["Content-Disposition"] = f'{disposition}; filename="{_file_name(image)}"'
    return Response(png, media_type="image/png", headers=headers)


@router.get("/thumb", dependencies=[XComReadAccess])
def thumbnail(
    request: Request,
    ti: TaskInstanceDep,
    session: SessionDep,
    may_read: DagReaderDep,
    size: int = DEFAULT_THUMBNAIL_SIZE,
) -> Response:
    """A small JPEG of the image (at most 40 KB), made once per image and size and cached."""
    if size not in THUMBNAIL_SIZES:
        raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}; got {size}")
    image, headers, not_modified = _image_versioned(request, session, ti, variant=f"-{size}")
    if not_modified is not None:
        return not_modified
    sha256 = str(image.result["sha256"])
    # The cache is looked up only after this result's own authorised read: the bytes at its location
    # hash to its sha256 and their sidecar names a DAG this user may read (a result naming another
    # image's sha256 and a missing file, or another spelling of a location, gets nothing).
    png = _png_or_error(session, image, may_read)
    cache = thumbnail_cache()
    key = f"{location_key(image.uri) if image.uri else 'xcom'}\n{sha256}"
    jpeg = cache.get(key, size)
    if jpeg is None:
        failed = cache.failure(sha256)
        if failed is not None:  # these bytes failed to decode before: not decoded again
            raise HTTPException(502, f"cannot make a thumbnail of {ti.label}: {failed}")
        try:
            made = make_thumbnails(png)  # every size from one decode: the others are asked for next
        except ThumbnailsUnavailableError as exc:
            raise HTTPException(501, str(exc)) from None
        except ThumbnailsBusyError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        except ValueError as exc:  # not a PNG, out of bounds, or over its CPU budget: never again
            cache.fail(sha256, str(exc))
            raise HTTPException(502, f"cannot make a thumbnail of {ti.label}: {exc}") from None
        for made_size, made_jpeg in made.items():
            cache.put(key, made_size, made_jpeg)
        jpeg = made[size]
    return Response(jpeg, media_type="image/jpeg", headers=headers)


@router.get("/sidecar", dependencies=[XComReadAccess])
def sidecar(ti: TaskInstanceDep, session: SessionDep, may_read: DagReaderDep) -> JSONResponse:
    """The provenance sidecar written beside the image, as JSON."""
    image = _image_or_error(session, ti)
    try:
        content = reads.verified_sidecar(image, may_read)
    except ImageUnavailableError as exc:
        raise HTTPException(exc.status, exc.message) from None
    if content is None:
        raise HTTPException(404, f"{ti.label} kept its image in XCom (no output_path), so it has no sidecar")
    return JSONResponse(content, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def _image_versioned(
    request: Request, session: Any, ti: TaskInstanceRef, variant: str = ""
) -> tuple[TaskImage, dict[str, str], Response | None]:
    """The task's image, the caching headers of this version of it (``variant``: e.g. a thumbnail
    size), and a 304 answer when the browser already holds that version."""
    image = _image_or_error(session, ti)
    sha256 = str(image.result["sha256"])
    etag = f'"{sha256}{variant}"'
    headers = _image_headers(request, sha256, etag)
    if request.headers.get("if-none-match") == etag:
        return image, headers, Response(status_code=304, headers=headers)
    return image, headers, None


def _image_headers(request: Request, sha256: str, etag: str) -> dict[str, str]:
    tagged = request.query_params.get("v") == content_tag(sha256)
    cache_control = IMMUTABLE if tagged else REVALIDATE
    return {"ETag": etag, "Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}


def _image_or_error(session: Any, ti: TaskInstanceRef) -> TaskImage:
    try:
        return queries.task_image(session, ti)
    except ImageUnavailableError as exc:
        raise HTTPException(exc.status, exc.message) from None


def _png_or_error(session: Any, image: TaskImage, may_read: reads.DagReader) -> bytes:
    try:
        return reads.read_image(session, image, may_read)
    except ImageUnavailableError as exc:
        raise HTTPException(exc.status, exc.message) from None


def _file_name(image: TaskImage) -> str:
    """The PNG's own file name when it is a safe header value, else one made of its sha256."""
    name = image.uri.rsplit("/", 1)[-1] if image.uri else ""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,200}\.png", name):
        return name
    return f"mai-{image.version}.png"


def _wants_html(request: Request) -> bool:
    last = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    return last in ("gallery", "run", "ti")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Errors as Airflow answers them (status and JSON ``detail``), as a page for the page routes."""
    assert isinstance(exc, StarletteHTTPException)
    if not _wants_html(request):
        headers = {"X-Content-Type-Options": "nosniff", **(exc.headers or {})}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
    nonce = _nonce()
    headings = {401: "Please sign in", 403: "Not allowed", 404: "Not found"}
    message = {
        401: "Your Airflow session has ended or you are not signed in: sign in to Airflow again.",
        403: "You do not have permission to see the images of this DAG.",
    }.get(exc.status_code, str(exc.detail))
    html = (
        _templates()
        .get_template("message.html")
        .render(
            title=headings.get(exc.status_code, "Cannot show this"),
            heading=headings.get(exc.status_code, "Cannot show this"),
            message=message,
            status=exc.status_code,
            nonce=nonce,
        )
    )
    headers = {**page_headers(nonce), **(exc.headers or {})}
    return HTMLResponse(html, status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ())[1:])}: {error.get('msg')}"
        for error in exc.errors()
    )
    return await _http_error(request, HTTPException(400, f"invalid request: {problems}"))


def create_app() -> FastAPI:
    """The plugin's app (the api-server mounts it under ``/mai``)."""
    app = FastAPI(
        title="MAI images (airflow-provider-mai)",
        description="Images made by Microsoft Foundry MAI tasks, for the Airflow UI.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app
