"""Provider registration: entry point, provider info, connection type and form, cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

from airflow_provider_mai import __version__
from airflow_provider_mai.get_provider_info import CONN_FIELDS, get_provider_info


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
