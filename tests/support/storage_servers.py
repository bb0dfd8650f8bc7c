"""Real object-store servers on loopback for the storage tests: Azurite (Azure Blob) and moto (S3).

A pytest plugin (see ``conftest.py``): session-wide servers, per-test containers and buckets.

Each is started once per test session on a free port and polled until it answers. When a server
is not installed the tests that need it skip with the reason - except under CI (``CI=true``),
where a missing server is a failure: CI installs both (see ``scripts/test.sh`` and ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT
from tests.support.servers import free_port, running, unavailable

ROOT = REPO_ROOT
AZURE_CONN = "mai_test_azurite"
S3_CONN = "mai_test_moto"


# -- Azurite ---------------------------------------------------------------------------------------


def azurite_binary() -> Path | None:
    """Azurite's launcher: ``$AZURITE_BIN``, the copy ``scripts/test.sh`` installs, or one on PATH."""
    candidates = [os.environ.get("AZURITE_BIN"), ROOT / ".ci/node/node_modules/.bin/azurite-blob"]
    found = shutil.which("azurite-blob")
    candidates.append(found)
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def azurite_account_key(binary: Path) -> str:
    """The development account key, read from the installed Azurite package itself."""
    package = binary.resolve().parents[1]  # node_modules/azurite/dist/src/... -> node_modules/azurite
    while package.name != "azurite" and package != package.parent:
        package = package.parent
    constants = package / "dist/src/blob/utils/constants.js"
    match = re.search(r'EMULATOR_ACCOUNT_KEY_STR\s*=\s*"([^"]+)"', constants.read_text())
    if not match:
        raise RuntimeError(f"no development account key found in {constants}")
    return match.group(1)


@dataclass(frozen=True)
class Azurite:
    """A running Azurite Blob service."""

    account: str
    key: str
    blob_endpoint: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's Blob service on a free loopback port, in memory, telemetry off."""
    binary = azurite_binary()
    if binary is None:
        unavailable("Azurite is not installed (npm install --prefix .ci/node azurite)")
    assert binary is not None
    port = free_port()
    command = [
        str(binary),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--silent",
    ]
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    with running(command, endpoint, "azurite"):
        yield Azurite(account="devstoreaccount1", key=azurite_account_key(binary), blob_endpoint=endpoint)


# -- moto (S3) -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's server mode on a free loopback port; yields its endpoint URL."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running(command, f"{endpoint}/moto-api/", "moto"):
        yield endpoint


def _require(*modules: str) -> None:
    """The Python side of a store: the Airflow provider and the fsspec file system it uses."""
    import importlib.util

    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            return False

    missing = [m for m in modules if not found(m)]
    if missing:
        unavailable(f"not installed: {', '.join(missing)} (group test: bash scripts/test.sh)")


def _define_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn: dict) -> None:
    """An Airflow connection for this test, as an ``AIRFLOW_CONN_<ID>`` JSON variable."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


# -- per-test containers and buckets behind Airflow connections ------------------------------------


@pytest.fixture
def azure_container(azurite: Azurite, monkeypatch, connect) -> str:
    """A fresh container behind an Airflow connection of type ``wasb``; returns ``abfs://conn@container``."""
    _require("airflow.providers.microsoft.azure", "adlfs", "azure.storage.blob")
    connect()
    _define_connection(
        monkeypatch,
        AZURE_CONN,
        {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}},
    )
    from azure.storage.blob import BlobServiceClient

    name = f"mai-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(name)
    return f"abfs://{AZURE_CONN}@{name}"


@pytest.fixture
def s3_bucket(moto_s3: str, monkeypatch, connect) -> str:
    """A fresh bucket behind an Airflow connection of type ``aws``; returns ``s3://conn@bucket``."""
    _require("airflow.providers.amazon", "s3fs", "boto3")
    connect()
    _define_connection(
        monkeypatch,
        S3_CONN,
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": moto_s3, "region_name": "us-east-1"},
        },
    )
    name = f"mai-{uuid.uuid4().hex[:12]}"
    s3_client(moto_s3).create_bucket(Bucket=name)  # us-east-1 takes no location constraint
    return f"s3://{S3_CONN}@{name}"


def s3_client(moto_s3: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client of the moto server at ``moto_s3`` (its test credentials)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_s3,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
