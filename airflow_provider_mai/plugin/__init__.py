"""The provider's Airflow UI plugin: MAI images inside Airflow's UI (api-server, Airflow >= 3.1).

Registered through the ``airflow.plugins`` entry point. Airflow imports this module in every
process that loads plugins (scheduler, workers, DAG processor), so it stays cheap: the FastAPI app
(and with it fastapi, Jinja2 and Pillow) is built only when the api-server asks for it.

- a nav page "MAI images" (Browse): recent runs of every DAG with MAI tasks, as thumbnails;
- a task instance tab "MAI image": the image, its details and its sidecar;
- a DAG run tab "MAI images": every image of the run, edits beside their sources.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_mai.links import (
    DAG_RUN_ROUTE,
    GALLERY_ROUTE,
    PLUGIN_PREFIX,
    TASK_INSTANCE_ROUTE,
)

_app: Any = None


def get_app() -> Any:
    """The plugin's FastAPI app, built on first use (only the api-server uses it)."""
    global _app
    if _app is None:
        from airflow_provider_mai.plugin.app import create_app

        _app = create_app()
    return _app


class MaiImagesPlugin(AirflowPlugin):
    """MAI images in the Airflow UI: a gallery, a task instance tab and a DAG run tab.

    Page URLs are relative to the UI's base (its ``<base href>``), so they work behind a proxy
    prefix. The UI fills ``{DAG_ID}``, ``{RUN_ID}``, ``{TASK_ID}`` and ``{MAP_INDEX}`` when the page
    it shows has them; an unmapped task's tab receives ``{MAP_INDEX}`` literally (read as -1).
    """

    name = "mai_images"
    external_views = [
        {
            "name": "MAI images",
            "href": f"{PLUGIN_PREFIX}/gallery",
            "url_route": GALLERY_ROUTE,
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "MAI image",
            "href": f"{PLUGIN_PREFIX}/ti?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}"
            "&map_index={MAP_INDEX}",
            "url_route": TASK_INSTANCE_ROUTE,
            "destination": "task_instance",
        },
        {
            "name": "MAI images",
            "href": f"{PLUGIN_PREFIX}/run?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "url_route": DAG_RUN_ROUTE,
            "destination": "dag_run",
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]  # lazily built
        """The FastAPI app the api-server mounts under ``/mai``."""
        return [{"app": get_app(), "url_prefix": f"/{PLUGIN_PREFIX}", "name": "MAI images"}]
