"""A small client of Airflow's public REST API (``/api/v2``): what the stack's commands, tests and
benchmark ask of a running Airflow."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


class AirflowApi:
    """A small client of Airflow's public REST API (``/api/v2``), with a bearer token.

    :param base_url: the api-server, e.g. ``http://127.0.0.1:8080``.
    :param username: a simple-auth-manager user.
    :param password: that user's password.
    :param timeout: seconds per request.
    """

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self._credentials = {"username": username, "password": password}
        self._token: str | None = None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AirflowApi({self.base_url!r})"

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        """Send one request; the decoded JSON answer (None for an empty one). HTTPError otherwise."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            if self._token is None:
                self._token = self.request("POST", "/auth/token", self._credentials, auth=False)[
                    "access_token"
                ]
            headers["Authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            raw = answer.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, **query: Any) -> Any:
        """GET with query parameters."""
        return self.request("GET", path + (f"?{urllib.parse.urlencode(query)}" if query else ""))

    def _put(self, collection: str, key: str, body: dict[str, Any]) -> None:
        try:
            self.request("POST", f"/api/v2/{collection}", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            self.request("PATCH", f"/api/v2/{collection}/{urllib.parse.quote(key)}", body)

    def put_connection(self, connection: dict[str, Any]) -> None:
        """Create or replace a connection."""
        self._put("connections", connection["connection_id"], connection)

    def put_pool(
        self, name: str, slots: int, description: str = "", *, include_deferred: bool = True
    ) -> None:
        """Create a pool or set its size. ``include_deferred``: deferred tasks keep their slot (a
        quota pool needs it: without it a deferrable task leaves the pool while its request is in
        flight, and the pool no longer bounds requests in flight)."""
        body = {
            "name": name,
            "slots": slots,
            "description": description,
            "include_deferred": include_deferred,
        }
        self._put("pools", name, body)

    def get_or_none(self, path: str, **query: Any) -> Any:
        """GET, or None when the answer is 404 (no such object)."""
        try:
            return self.get(path, **query)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def pages(self, path: str, key: str, **query: Any) -> list[dict[str, Any]]:
        """Every item of a collection (``key`` names its list in the answer), all pages."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.get(path, **query, limit=100, offset=len(found))
            found += page[key]
            if not page[key] or len(found) >= page["total_entries"]:
                return found

    def dag_exists(self, dag_id: str) -> bool:
        """Whether the DAG is parsed and known to the api-server."""
        return self.get_or_none(f"/api/v2/dags/{dag_id}") is not None

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, **run: Any) -> dict[str, Any]:
        """Unpause ``dag_id`` and start a run, logical date now (so ``{{ ds }}`` renders); the new run
        (``dag_run_id``, ``state``...). ``run`` adds fields of the request body."""
        from datetime import datetime, timezone

        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        body = {"logical_date": datetime.now(timezone.utc).isoformat(), "conf": conf or {}, **run}
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """A DAG run (``state``, ``start_date``, ``end_date``...)."""
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")

    def wait_for_run(self, dag_id: str, run_id: str, within: float, interval: float = 1.0) -> dict[str, Any]:
        """Poll the run until it ends (success or failed); TimeoutError after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} still {run['state']} after {within:.0f} s")
            time.sleep(interval)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (all pages), mapped ones one by one."""
        return self.pages(
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances", "task_instances"
        )

    def result(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """A task instance's XCom ``return_value``, or None when it has none."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}"
            "/xcomEntries/return_value"
        )
        entry = self.get_or_none(path, map_index=map_index)
        value = entry["value"] if entry is not None else None
        if isinstance(value, str):
            try:  # a dict or list comes as its JSON text; a plain string as itself
                return json.loads(value)
            except ValueError:
                return value
        return value


def images_of_run(
    api: AirflowApi, dag_id: str, run_id: str
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(task instance, MAI result) for every image the run made."""
    for ti in api.task_instances(dag_id, run_id):
        if ti["state"] != "success":
            continue
        result = api.result(dag_id, run_id, ti["task_id"], ti["map_index"])
        if isinstance(result, dict) and "sha256" in result and "uri" in result:
            yield ti, result
