"""Secrets end to end: a real `airflow dags test` run with a long API key, an Entra ID token and a
wrong key, then every place a secret could surface is searched for them: the run's console output
(where `airflow dags test` writes the task logs), any log files under AIRFLOW_HOME, XCom values,
rendered template fields, and the failed task's error."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from airflow_provider_mai.emulator import Fault
from tests.support.helpers import airflow_dags_test
from tests.support.paths import REPO_ROOT, TEST_DAGS

pytestmark = pytest.mark.integration


ROOT = REPO_ROOT


def test_no_secret_surfaces_anywhere_in_a_real_dag_run(airflow_db, emulator, monkeypatch):
    api_key = "mai-key-" + secrets.token_urlsafe(96)
    wrong_key = "mai-wrong-" + secrets.token_urlsafe(96)
    token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(300)
    emulator.api_key = api_key
    conn = {
        "conn_type": "mai",
        "host": emulator.url,
        "extra": {"deployment": "mai-image-2-5", "retry_base_delay": 0.01},
    }
    env = {
        **os.environ,
        "AIRFLOW_CONN_MAI_SECRET_KEY": json.dumps({**conn, "password": api_key}),
        "AIRFLOW_CONN_MAI_SECRET_ENTRA": json.dumps(
            {**conn, "extra": {**conn["extra"], "auth_type": "entra_id"}}
        ),
        "AIRFLOW_CONN_MAI_SECRET_WRONG_KEY": json.dumps({**conn, "password": wrong_key}),
        "MAI_TEST_ENTRA_TOKEN": token,
        "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
    }
    emulator.inject(Fault(status=503), times=1)  # a retry, so the retry path logs too

    result = airflow_dags_test("mai_test_secrets", env)
    console = result.stdout + result.stderr

    # The run really used all three secrets...
    sent = {r.headers.get("api-key") or r.headers.get("authorization") for r in emulator.requests}
    assert {api_key, wrong_key, f"Bearer {token}"} <= sent, console[-3000:]
    assert "retrying" in console
    assert "401" in console  # the denied task failed, with a clear message

    # ...and none of them surfaces anywhere.
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        states = {
            ti.task_id: ti.state for ti in session.query(TaskInstance).filter_by(dag_id="mai_test_secrets")
        }
        xcoms = [
            (row.key, json.dumps(XComModel.deserialize_value(row)))
            for row in session.query(XComModel).filter_by(dag_id="mai_test_secrets")
        ]
        rendered = [
            json.dumps(row.rendered_fields, default=str)
            for row in session.query(RenderedTaskInstanceFields).filter_by(dag_id="mai_test_secrets")
        ]
    assert states == {
        "generate_with_key": "success",
        "generate_with_token": "success",
        "edit_with_key": "success",
        "denied": "failed",
    }
    # Three results, and the "MAI image" extra link of each of the four MAI task instances.
    assert sorted(key for key, _ in xcoms) == ["_link_MaiImageLink"] * 4 + ["return_value"] * 3
    assert rendered
    log_files = [p for p in (Path(os.environ["AIRFLOW_HOME"]) / "logs").rglob("*") if p.is_file()]
    places = {
        "console": console,
        "xcom": "\n".join(value for _, value in xcoms),
        "rendered fields": "\n".join(rendered),
    }
    places.update({str(p): p.read_text(errors="replace") for p in log_files})
    for secret in (api_key, wrong_key, token):
        for fragment in (secret, secret[-40:]):  # also no tail of it (e.g. a truncated header)
            leaked = [where for where, text in places.items() if fragment in text]
            assert leaked == [], f"a secret leaked into {leaked}"
