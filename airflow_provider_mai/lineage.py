"""OpenLineage for the MAI operators: the images read and written as datasets, the deployment as facets.

Imported only when apache-airflow-providers-openlineage is installed (it calls the operators'
``get_openlineage_facets_on_complete``, which import this module); inert otherwise. Dataset names follow
OpenLineage's object-storage naming: ``s3://bucket`` + key, ``gs://bucket`` + path,
``abfss://container@account.dfs.core.windows.net`` + path for Azure (``wasbs://…blob…`` for
wasb), ``file`` + absolute path for local files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
from openlineage.client.facet_v2 import JobFacet, RunFacet

from airflow_provider_mai import __version__
from airflow_provider_mai.models import ImageRecord

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

_AZURE_SCHEMES = {"abfs", "abfss", "adl", "az", "wasb", "wasbs"}


def dataset_name(location: Any) -> tuple[str, str] | None:
    """OpenLineage ``(namespace, name)`` of an image location (URI string or ObjectStoragePath)."""
    if location is None or location == "":
        return None
    text = str(location)
    if "://" not in text:
        return "file", text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    # Airflow's ObjectStoragePath spells a connection as scheme://conn_id@bucket/key.
    bucket = parts.netloc.rsplit("@", 1)[-1]
    key = parts.path.lstrip("/")
    if scheme in ("file", "local"):
        return "file", parts.path
    if scheme in ("s3", "s3a", "s3n"):
        return f"s3://{bucket}", key
    if scheme in ("gs", "gcs"):
        return f"gs://{bucket}", key
    if scheme in _AZURE_SCHEMES:
        account = _azure_account(location)
        if account:
            if scheme.startswith("wasb"):
                return f"wasbs://{bucket}@{account}.blob.core.windows.net", key
            return f"abfss://{bucket}@{account}.dfs.core.windows.net", key
        return f"abfss://{bucket}", key
    return f"{scheme}://{bucket}", key


def _azure_account(location: Any) -> str | None:
    """The storage account, which Airflow keeps in the connection rather than in the URI."""
    try:
        if isinstance(location, str):
            from airflow.sdk import ObjectStoragePath

            location = ObjectStoragePath(location)
        fs = location.fs
        # adlfs knows the account from its options, or (with a connection string) from its client.
        return getattr(fs, "account_name", None) or getattr(
            getattr(fs, "service_client", None), "account_name", None
        )
    except Exception:  # no connection, no credentials: name the dataset without the account
        return None


def operator_lineage(record: ImageRecord, *, endpoint: str | None) -> OperatorLineage:
    """The lineage of one finished MAI task, from its result record."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    inputs = [Dataset(namespace=n, name=k) for n, k in filter(None, [dataset_name(record.source_image)])]
    outputs = [Dataset(namespace=n, name=k) for n, k in filter(None, [dataset_name(record.uri)])]
    job = MaiImageJobFacet(operation=record.operation, deployment=record.deployment, endpoint=endpoint)
    run = MaiImageRunFacet(**record.lineage_fields())
    return OperatorLineage(
        inputs=inputs, outputs=outputs, job_facets={"mai_image": job}, run_facets={"mai_image": run}
    )


@attrs.define
class MaiImageJobFacet(JobFacet):
    """Which MAI deployment the task calls, on which endpoint, for what (``generate`` / ``edit``)."""

    operation: str
    deployment: str | None
    endpoint: str | None
    provider_version: str = __version__


#: What one run received from the service, for cost and provenance reports: the result record's
#: lineage fields (declared once, in :class:`~airflow_provider_mai.models.ImageRecord`).
MaiImageRunFacet = attrs.make_class(
    "MaiImageRunFacet",
    {name: attrs.field(default=None) for name in ImageRecord.lineage_field_names()},
    bases=(RunFacet,),
)
