"""The documentation's examples are real code: every Python block runs, every connection JSON loads."""

from __future__ import annotations

import json
import re

import pytest

from airflow_provider_mai.hooks.mai import MaiHook
from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for i, code in enumerate(re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)):
            found.append((f"{page.name}#{i}", code))
    return found


def test_every_page_is_found():
    assert {p.name for p in PAGES} >= {
        "README.md",
        "connections.md",
        "operators.md",
        "emulator.md",
        "changelog.md",
        "ui.md",
    }


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_examples_run(where, code, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIRFLOW_CONN_MAI_DEFAULT", raising=False)
    namespace: dict = {}
    exec(compile(code, where, "exec"), namespace)  # DAG files parse; emulator examples run for real
    from airflow.sdk import DAG

    dags = [v for v in namespace.values() if isinstance(v, DAG)]
    if "with DAG(" in code:
        assert dags, "a DAG example defined no DAG"
        assert any(d.task_dict for d in dags)


@pytest.mark.parametrize(("where", "text"), blocks("json"), ids=[w for w, _ in blocks("json")])
def test_connection_examples_load(where, text, monkeypatch):
    value = json.loads(text)
    if value.get("conn_type") != "mai":
        return  # an XCom or sidecar sample: valid JSON is the check
    monkeypatch.setenv("AIRFLOW_CONN_DOCS_EXAMPLE", json.dumps(value))
    settings = MaiHook("docs_example").settings
    assert settings.endpoint == "https://my-resource.services.ai.azure.com"
    assert settings.deployment == "my-mai-image-2-5"
    assert settings.auth_type == ("api_key" if value.get("password") else "entra_id")


def test_every_connection_field_is_documented():
    from airflow_provider_mai.get_provider_info import CONN_FIELDS

    page = (ROOT / "docs" / "connections.md").read_text()
    assert [f for f in CONN_FIELDS if f"`{f}`" not in page] == []
