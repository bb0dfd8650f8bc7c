"""The house's rules, checked: the client (both drivers) runs without Airflow, no import circles, one
result record."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_provider_mai.models import ImageRecord
from airflow_provider_mai.operators.mai import MaiGenerateImageOperator
from tests.support.helpers import task_context
from tests.support.paths import REPO_ROOT

#: What a DAG parse must not load: heavy libraries, and our own modules that only a running task needs.
NOT_AT_PARSE = (
    "requests",
    "urllib3",
    "httpx",
    "azure.identity",
    "PIL",
    "airflow_provider_mai.client",
    "airflow_provider_mai.storage",
    "airflow_provider_mai.inputs",
    "airflow_provider_mai.models",
    "airflow_provider_mai.hooks.mai",
)


def test_importing_operators_loads_only_what_a_dag_parse_needs():
    code = (
        "import sys, airflow.sdk;"
        "before = set(sys.modules);"
        "import airflow_provider_mai.operators.mai;"
        "new = set(sys.modules) - before;"
        f"print(','.join(m for m in {NOT_AT_PARSE!r} if m in new))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""


PACKAGE = REPO_ROOT / "airflow_provider_mai"


#: Modules that must work without Airflow installed: the client package and what it stands on.
AIRFLOW_FREE = sorted(
    [f"{name}.py" for name in ("api", "models", "validation")]
    + [str(path.relative_to(PACKAGE)) for path in (PACKAGE / "client").rglob("*.py")]
)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("name", AIRFLOW_FREE)
def test_the_client_side_names_nothing_from_airflow(name):
    # exceptions.py is the one bridge: it uses Airflow's bases when Airflow is there.
    assert not [m for m in _imports(PACKAGE / name) if m == "airflow" or m.startswith("airflow.")]


def test_no_import_circles_not_even_for_type_hints():
    graph = {
        _module(path): {m for m in _imports(path) if m.startswith("airflow_provider_mai")}
        for path in PACKAGE.rglob("*.py")
    }
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == node:
                continue
            assert state.get(target) != "open", f"import circle: {' -> '.join([*trail, node, target])}"
            if target not in state:
                visit(target, [*trail, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


#: Code that makes ``import airflow`` fail in a child interpreter, as where Airflow is not installed.
NO_AIRFLOW = (
    "import sys\n"
    "class NoAirflow:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'airflow' or name.startswith('airflow.'):\n"
    "            raise ImportError('Airflow is not installed here')\n"
    "sys.meta_path.insert(0, NoAirflow())\n"
)


def test_the_client_generates_an_image_with_airflow_unimportable(emulator):
    code = NO_AIRFLOW + textwrap.dedent(
        f"""
        from airflow_provider_mai.client import MaiClient
        from airflow_provider_mai.exceptions import MaiError
        from airflow_provider_mai.models import GenerateRequest
        from airflow_provider_mai.client.settings import MaiSettings

        settings = MaiSettings.from_connection(
            "plain", host={emulator.url!r}, password={emulator.api_key!r}, extra={{"deployment": "d"}}
        )
        request = GenerateRequest("no airflow here", 768, 768, deployment="mai-image-2")
        image = MaiClient(settings).send(request)
        base = MaiError.__mro__[1].__name__
        print(image.width, image.height, image.attempts, "airflow" in sys.modules, base)

        import asyncio
        from airflow_provider_mai.client.async_core import AsyncMaiClient

        async def main():
            async with AsyncMaiClient(settings) as client:
                return await client.send(request)

        image = asyncio.run(main())
        print(image.width, image.height, image.attempts, "airflow" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "768",
        "768",
        "1",
        "False",
        "AirflowException",
        "768",
        "768",
        "1",
        "False",
    ]
    assert len(emulator.requests) == 2


def test_importing_the_client_loads_no_http_library():
    # The transports import requests or httpx when they first send: a client built and never used
    # costs neither. (Airflow itself loads httpx, so it is kept out here.)
    code = NO_AIRFLOW + textwrap.dedent(
        """
        import airflow_provider_mai.client, airflow_provider_mai.client.async_core
        print(",".join(m for m in ("requests", "urllib3", "httpx") if m in sys.modules) or "none")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "none"


def _targets(target: str) -> set[str]:
    return {f.name for f in dataclasses.fields(ImageRecord) if target in f.metadata["to"]}


def test_xcom_and_sidecar_carry_exactly_the_record_fields(connect, emulator, tmp_path):
    connect()
    result = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=f"{tmp_path}/"
    ).execute(task_context("g"))
    sidecar = json.loads(Path(result["sidecar_uri"].removeprefix("file://")).read_text())
    assert set(result) == _targets("xcom")
    assert set(sidecar) == _targets("sidecar")
    reused = MaiGenerateImageOperator(
        task_id="g", prompt="p", width=768, height=768, output_path=f"{tmp_path}/", if_exists="skip"
    ).execute(task_context("g"))
    assert set(reused) == set(result)
    assert reused["reused"] is True and reused["attempts"] == 0


def test_the_lineage_run_facet_is_the_record_lineage_fields():
    pytest.importorskip("airflow.providers.openlineage")
    import attrs

    from airflow_provider_mai.lineage import MaiImageRunFacet

    own = {f.name for f in attrs.fields(MaiImageRunFacet) if not f.name.startswith("_")}
    assert own == _targets("lineage")
