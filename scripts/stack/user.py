"""What the user brings to ``up``: their own DAG folder and their own connections, checked before
anything starts (a clear error names the option and the connection, never a secret)."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ROOT, StackError

#: The folders the stack always runs (bundles ``examples`` and ``stack-tests``).
STACK_DAG_FOLDERS = {"examples": ROOT / "dags", "stack-tests": ROOT / "tests" / "stack" / "dags"}
#: The bundle name of the user's folder.
USER_BUNDLE = "user-dags"
#: What Airflow accepts as a connection id (letters, digits, ``_``, ``.``, ``-``).
CONN_ID = re.compile(r"[A-Za-z0-9_.\-]{1,250}")
#: Connections the stack owns; ``mai_default`` may be replaced (then ``up`` keeps the user's).
STACK_CONNECTIONS = ("mai_pacing_redis",)
#: The fields of a connection in a connections file (as ``airflow connections export`` writes them).
FIELDS = ("conn_type", "description", "host", "login", "password", "schema", "port", "extra")


@dataclass(frozen=True)
class DagsChoice:
    """The DAG folder asked for, and where the request came from (for messages).

    :param folder: the folder, or None for "the examples only".
    :param source: ``--dags``, ``MAI_STACK_DAGS_FOLDER`` or ``AIRFLOW__CORE__DAGS_FOLDER``.
    """

    folder: Path | None
    source: str


def dags_choice(option: str | None, environ: dict[str, str]) -> DagsChoice | None:
    """The user's DAG folder from ``--dags``, else ``MAI_STACK_DAGS_FOLDER``, else Airflow's own
    ``AIRFLOW__CORE__DAGS_FOLDER`` (honoured, not dropped: the stack sets every other Airflow
    setting itself). None when nothing asks for one (a running stack keeps its folder); an empty
    value asks for the examples only. Relative paths are from the current folder."""
    for source, value in (
        ("--dags", option),
        ("MAI_STACK_DAGS_FOLDER", environ.get("MAI_STACK_DAGS_FOLDER")),
        ("AIRFLOW__CORE__DAGS_FOLDER", environ.get("AIRFLOW__CORE__DAGS_FOLDER")),
    ):
        if value is None or (value == "" and source != "--dags"):
            continue
        folder = check_dags_folder(value, source) if value else None
        if folder is None and value and source != "--dags":
            continue  # a variable naming the stack's own examples asks for nothing more
        return DagsChoice(folder, source)
    return None


def check_dags_folder(value: str, source: str) -> Path | None:
    """The folder as an absolute path, or None when it is one the stack runs already."""
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise StackError(f"{source} {value}: no such folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise StackError(f"{source} {folder}: not readable")
    for name, ours in STACK_DAG_FOLDERS.items():
        if folder == ours:
            return None  # already on the stack (bundle `name`)
        if ours.is_relative_to(folder):
            raise StackError(
                f"{source} {folder} holds the stack's own DAGs ({ours}, bundle {name}): their DAGs would be "
                "parsed twice; give the folder of your DAGs alone"
            )
    metadata = sorted(p.name for p in folder.glob("*.egg-info")) + sorted(
        p.name for p in folder.glob("*.dist-info")
    )
    if metadata:
        # Airflow puts a bundle's folder on sys.path: package metadata there makes a second copy of
        # that package's plugins and providers ("Plugin ... already registered").
        raise StackError(
            f"{source} {folder} holds package metadata ({', '.join(metadata)}): Airflow would load that "
            "package twice; give the folder of your DAGs (e.g. its dags/ subfolder)"
        )
    return folder


def dag_files(folder: Path) -> list[str]:
    """Python files of ``folder`` that may define DAGs (Airflow's safe-mode test: the file mentions
    both ``airflow`` and ``dag``), relative to it; a tree of ``.``-folders and caches skipped."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        try:
            text = path.read_bytes().lower()
        except OSError:
            continue
        if b"airflow" in text and b"dag" in text:
            found.append(str(relative))
    return found


def read_connections(options: list[str], files: list[str]) -> dict[str, Any]:
    """Connections from ``--connection ID=URI`` and ``--connections-file FILE`` (a JSON object of
    ``{id: URI}`` or ``{id: {conn_type, host, login, password, schema, port, extra, description}}``);
    raw values, checked for form. A later definition of an id replaces an earlier one."""
    found: dict[str, Any] = {}
    for path in files:
        file = Path(path).expanduser()
        try:
            mode = file.stat().st_mode
            data = json.loads(file.read_text())
        except OSError as exc:
            raise StackError(f"--connections-file {path}: cannot read it ({exc.strerror})") from None
        except ValueError as exc:
            raise StackError(f"--connections-file {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise StackError(f'--connections-file {path}: expected a JSON object {{"conn_id": ...}}')
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"stack: note: {path} is readable by other users (it holds passwords): chmod 600 {path}")
        for conn_id, value in data.items():
            found[_checked_id(conn_id, f"--connections-file {path}")] = _checked_value(conn_id, value)
    for option in options:
        conn_id, sep, uri = option.partition("=")
        if not sep or not uri:  # the text is not echoed: it may be a URI with a password
            raise StackError("--connection expects ID=URI, e.g. aws_default=aws://?region_name=eu-west-1")
        found[_checked_id(conn_id, "--connection")] = uri
    return found


def _checked_id(conn_id: str, where: str) -> str:
    if not CONN_ID.fullmatch(conn_id):
        raise StackError(f"{where}: {conn_id!r} is not a connection id (letters, digits, _ . -; at most 250)")
    if conn_id in STACK_CONNECTIONS:
        raise StackError(f"{where}: {conn_id} is the stack's own connection; choose another id")
    return conn_id


def _checked_value(conn_id: str, value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise StackError(f"connection {conn_id}: expected a URI string or an object of fields")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise StackError(
            f"connection {conn_id}: unknown fields {', '.join(unknown)} (known: {', '.join(FIELDS)})"
        )
    if not value.get("conn_type"):
        raise StackError(f"connection {conn_id}: conn_type is missing")
    return value


def rest_connections(raw: dict[str, Any], airflow_home: Path) -> list[dict[str, Any]]:
    """The connections in the REST API's form, parsed by Airflow's own ``Connection`` (URIs as
    ``AIRFLOW_CONN_*`` variables take them). Errors name the connection, never its value."""
    if not raw:
        return []
    # Importing Airflow reads (and fills) its home: yours when you have one, else the stack's.
    os.environ.setdefault("AIRFLOW_HOME", str(airflow_home))
    from airflow.sdk.definitions.connection import Connection

    bodies = []
    for conn_id, value in raw.items():
        try:
            if isinstance(value, str):
                connection = Connection.from_uri(value, conn_id=conn_id)
            else:
                connection = Connection.from_json(json.dumps(value), conn_id=conn_id)
        except Exception as exc:  # Airflow's messages quote the URI, password included
            raise StackError(
                f"connection {conn_id}: Airflow cannot read it ({type(exc).__name__}); a URI looks like "
                "conn-type://login:password@host:port/schema?extra_key=value"
            ) from None
        if not connection.conn_type:
            raise StackError(f"connection {conn_id}: no connection type (the URI's scheme, e.g. postgres://)")
        bodies.append(
            {
                "connection_id": conn_id,
                "conn_type": connection.conn_type,
                "description": connection.description,
                "host": connection.host,
                "login": connection.login,
                "password": connection.password,
                "schema": connection.schema,
                "port": connection.port,
                "extra": connection.extra,
            }
        )
    return bodies
