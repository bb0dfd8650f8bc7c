"""An auth manager with per-DAG permissions, for the UI plugin's tests.

Airflow's simple auth manager lets every role read every DAG, so it cannot show a 403 for one DAG.
This is the simple auth manager plus one rule, as a real deployment's FAB or Keycloak policy
would have: the users listed in ``MAI_TEST_RESTRICTED_USERS`` may not read the DAGs listed in
``MAI_TEST_HIDDEN_DAGS`` (both comma-separated). Everything else - users, passwords, tokens,
roles - is the simple auth manager's. Select it with
``AIRFLOW__CORE__AUTH_MANAGER=tests.support.ui_auth.PerDagAuthManager``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

#: The users of the UI tests' api-servers (name -> simple auth manager role), and their passwords.
USERS = {"admin": "admin", "viewer": "viewer", "outsider": "viewer"}
PASSWORDS = {name: f"{name}-secret-pw" for name in USERS}
#: Every DAG-level question asked in this process: (user, method, access entity, dag id).
QUESTIONS: list[tuple[str, str, str | None, str | None]] = []


def _listed(variable: str) -> set[str]:
    return {item.strip() for item in os.environ.get(variable, "").split(",") if item.strip()}


class PerDagAuthManager(SimpleAuthManager):
    """The simple auth manager, except that restricted users cannot read hidden DAGs."""

    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        dag_id = details.id if details is not None else None
        entity = getattr(access_entity, "value", access_entity)
        QUESTIONS.append((user.get_name(), method, None if entity is None else str(entity), dag_id))
        restricted = user.get_name() in _listed("MAI_TEST_RESTRICTED_USERS")
        if restricted and dag_id in _listed("MAI_TEST_HIDDEN_DAGS"):
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )


def api_server_auth_env(home: Path, *, hidden_dags: Iterable[str]) -> dict[str, str]:
    """Environment for an api-server with this auth manager and the users above (passwords in a
    0600 file under ``home``): ``outsider`` may read every DAG but ``hidden_dags``."""
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    passwords.chmod(0o600)
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": f"{__name__}.PerDagAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{r}" for n, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "mai-ui-tests-" + "j" * 64,
        "MAI_TEST_HIDDEN_DAGS": ",".join(hidden_dags),
        "MAI_TEST_RESTRICTED_USERS": "outsider",
    }
