"""Provider registration: entry point, provider info (valid by Airflow's own schemas), connection type
and form, the extra link and the configuration options, as Airflow's CLI shows them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import airflow
import jsonschema
import pytest

from airflow_provider_mai import __version__
from airflow_provider_mai.get_provider_info import CONFIG, CONN_FIELDS, get_provider_info
from tests.support.paths import REPO_ROOT

#: How the package reads Airflow's configuration: conf.get("section", "option", ...) and its kin.
CONF_READ = re.compile(r"\bconf\.(?:get\w*|has_option)\(\s*[\"'](\w+)[\"']\s*,\s*[\"'](\w+)[\"']")


def airflow_schema(name: str) -> dict[str, Any]:
    """One of the JSON schemas that ship inside apache-airflow."""
    return json.loads((Path(airflow.__file__).parent / name).read_text())


def airflow_cli(*args: str) -> str:
    """Run ``airflow ARGS`` in this suite's AIRFLOW_HOME; its standard output."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def last_json(output: str) -> Any:
    """The JSON a CLI printed with ``--output json`` (Airflow may print warnings before it)."""
    return json.loads([line for line in output.splitlines() if line.startswith(("[", "{"))][-1])


def test_entry_point_is_registered():
    (point,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_mai")
    ]
    info = point.load()()
    assert info["package-name"] == "airflow-provider-mai"
    assert info["versions"] == [__version__]


def test_provider_info_names_hook_operator_and_connection_type():
    info = get_provider_info()
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == "mai"
    assert conn_type["hook-class-name"] == "airflow_provider_mai.hooks.mai.MaiHook"
    assert info["operators"][0]["python-modules"] == ["airflow_provider_mai.operators.mai"]
    assert CONN_FIELDS["client_secret"]["schema"]["format"] == "password"


def test_providers_manager_sees_the_connection_type_and_form():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-mai" in manager.providers
    hook_info = manager.hooks["mai"]
    assert hook_info.hook_class_name == "airflow_provider_mai.hooks.mai.MaiHook"
    assert hook_info.connection_id_attribute_name == "mai_conn_id"
    widgets = manager.connection_form_widgets
    for name in (
        "deployment",
        "auth_type",
        "tenant_id",
        "client_id",
        "client_secret",
        "managed_identity_client_id",
        "timeout",
        "max_retries",
        "deferrable",
    ):
        assert f"extra__mai__{name}" in widgets
    assert widgets["extra__mai__client_secret"].is_sensitive
    behaviour = manager.field_behaviours["mai"]
    assert {"schema", "login"} <= set(behaviour["hidden_fields"])
    assert "port" not in behaviour["hidden_fields"]  # see get_provider_info: Test needs it on 3.3.2
    assert behaviour["relabeling"]["password"] == "API key"


def test_airflow_providers_list_shows_the_provider(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = {p["package_name"]: p for p in json.loads(result.stdout)}
    assert listed["airflow-provider-mai"]["version"] == __version__


def test_provider_info_is_valid_by_airflows_runtime_schema():
    # What Airflow's providers manager checks when it loads the entry point.
    jsonschema.Draft7Validator(airflow_schema("provider_info.schema.json")).validate(get_provider_info())


def test_each_section_is_valid_by_airflows_provider_yaml_schema():
    # The stricter schema of Airflow's own provider.yaml files, applied to each section we declare
    # (the file-level keys it requires, such as state and source-date-epoch, are its release tooling's).
    schema = airflow_schema("provider.yaml.schema.json")
    info = get_provider_info()
    for key, value in info.items():
        section = {**schema["properties"][key], "definitions": schema["definitions"]}
        jsonschema.Draft7Validator(section).validate(value)
    integrations = {i["integration-name"] for i in info["integrations"]}
    assert {m["integration-name"] for m in info["hooks"] + info["operators"]} <= integrations


def test_every_config_option_is_fully_described():
    option_keys = {"description", "version_added", "type", "example", "default"}
    for section in CONFIG.values():
        assert section["description"]
        for name, option in section["options"].items():
            assert set(option) == option_keys, name
            assert option["description"] and option["example"] is not None
            assert option["type"] in ("string", "boolean", "integer", "float")


def test_every_option_the_package_reads_is_declared_or_airflows_own():
    from airflow.configuration import retrieve_configuration_description

    airflows = retrieve_configuration_description(include_providers=False)
    reads = {
        (section, option)
        for path in (REPO_ROOT / "airflow_provider_mai").rglob("*.py")
        for section, option in CONF_READ.findall(path.read_text())
    }
    assert ("mai", "ui_thumbnail_cache_mb") in reads
    undeclared = [
        f"[{section}] {option}"
        for section, option in sorted(reads)
        if option not in CONFIG.get(section, {}).get("options", {})
        and option not in airflows.get(section, {}).get("options", {})
    ]
    assert undeclared == []


def test_declared_defaults_are_the_ones_the_code_falls_back_to():
    from airflow_provider_mai.plugin.thumbnails import DEFAULT_CACHE_MB

    assert CONFIG["mai"]["options"]["ui_thumbnail_cache_mb"]["default"] == str(DEFAULT_CACHE_MB)


def test_airflow_config_knows_the_option_and_its_default(monkeypatch):
    monkeypatch.delenv("AIRFLOW__MAI__UI_THUMBNAIL_CACHE_MB", raising=False)
    assert airflow_cli("config", "get-value", "mai", "ui_thumbnail_cache_mb").strip() == "32"


def test_airflow_providers_links_lists_the_extra_link():
    from airflow_provider_mai.links import MaiImageLink
    from airflow_provider_mai.operators.mai import MaiEditImageOperator, MaiGenerateImageOperator

    assert MaiImageLink.name == "MAI image"
    for operator in (MaiGenerateImageOperator, MaiEditImageOperator):
        assert [type(link) for link in operator.operator_extra_links] == [MaiImageLink]
    rows = last_json(airflow_cli("providers", "links", "-o", "json"))
    assert "airflow_provider_mai.links.MaiImageLink" in [row["extra_link_class_name"] for row in rows]


@pytest.mark.parametrize("name", ["Documentation", "Source", "Changelog", "Issues"])
def test_project_urls_are_in_the_installed_metadata(name):
    from importlib.metadata import metadata

    urls = dict(u.split(", ", 1) for u in metadata("airflow-provider-mai").get_all("Project-URL") or [])
    assert urls[name].startswith("https://github.com/airflow-provider-mai/airflow-provider-mai")


def test_airflow_providers_get_shows_the_documentation_url():
    (info,) = last_json(airflow_cli("providers", "get", "airflow-provider-mai", "--full", "-o", "json"))
    # Airflow 3.2 keeps the space after the comma of "Project-URL: Documentation, <url>"; 3.3 strips it.
    assert (
        info["documentation-url"].strip()
        == "https://github.com/airflow-provider-mai/airflow-provider-mai#readme"
    )
    assert info["extra-links"] == ["airflow_provider_mai.links.MaiImageLink"]
    assert info["versions"] == [__version__]
