"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

#: Connection form fields, read declaratively by Airflow >= 3.2 (our floor) for the UI form.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "deployment": {
        "label": "Deployment",
        "description": "Default deployment name (chosen at deploy time), used when a task names no model.",
        "schema": {"type": ["string", "null"]},
    },
    "auth_type": {
        "label": "Auth type",
        "description": "api_key or entra_id. Empty: api_key when an API key is set, else entra_id.",
        "schema": {"type": ["string", "null"], "enum": ["api_key", "entra_id"]},
    },
    "tenant_id": {
        "label": "Tenant ID",
        "description": "Entra ID service principal: directory (tenant) id.",
        "schema": {"type": ["string", "null"]},
    },
    "client_id": {
        "label": "Client ID",
        "description": "Entra ID service principal: application (client) id.",
        "schema": {"type": ["string", "null"]},
    },
    "client_secret": {
        "label": "Client secret",
        "description": "Entra ID service principal: client secret.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "managed_identity_client_id": {
        "label": "Managed identity client ID",
        "description": "Client id of a user-assigned managed identity. With no identity and no service "
        "principal, DefaultAzureCredential is used.",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Timeout (s)",
        "description": "Seconds for one response: connecting, headers and the whole body together. "
        "Generations take ~40 s at the median and have been seen past 100 s.",
        "schema": {"type": ["number", "null"], "default": 300},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of a transient failure (429, 408, 5xx, dropped connection).",
        "schema": {"type": ["integer", "null"], "default": 5},
    },
    "rpm": {
        "label": "Requests per minute",
        "description": "The deployment's quota. When set, requests are paced to stay under it (shared by "
        "all tasks on a host) instead of learning the limit from 429 answers.",
        "schema": {"type": ["number", "null"]},
    },
    "rpm_state_dir": {
        "label": "Pacing state folder",
        "description": "Folder of the shared send-slot schedule for 'rpm' (default: the temp folder). "
        "A shared volume with file locks extends pacing across hosts.",
        "schema": {"type": ["string", "null"]},
    },
    "rpm_redis_conn_id": {
        "label": "Pacing Redis connection",
        "description": "Id of an Airflow Redis connection whose server holds the send-slot schedule for "
        "'rpm', so pacing holds across worker hosts (e.g. the Celery broker's Redis).",
        "schema": {"type": ["string", "null"]},
    },
    "retry_sent_requests": {
        "label": "Retry requests the service received",
        "description": "Retry a request that reached the service in full and then failed (a timeout, "
        "a cut-off answer, a 5xx): the service may have made and billed that image. Default true.",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "deferrable": {
        "label": "Deferrable",
        "description": "How tasks on this connection run when they do not say: true sends each request "
        "from the triggerer (needs output_path), false holds a worker slot. Empty: [operators] "
        "default_deferrable. A task's own deferrable= wins.",
        "schema": {"type": ["boolean", "null"]},
    },
    "max_response_mb": {
        "label": "Largest answer (MB)",
        "description": "Cap on one response body after decompression (a 1024x1024 answer is 2-4 MB).",
        "schema": {"type": ["number", "null"], "default": 64},
    },
    "max_input_mb": {
        "label": "Largest edit input (MB)",
        "description": "Cap on an edit's input image; larger inputs are refused before any request.",
        "schema": {"type": ["number", "null"], "default": 50},
    },
    "allow_http_inputs": {
        "label": "Allow web URLs as edit input",
        "description": "Let tasks read http(s):// URLs as edit input. Off: a template rendering a URL "
        "from upstream data cannot make workers fetch arbitrary addresses.",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
    "ca_bundle": {
        "label": "CA bundle path",
        "description": "Path to a PEM CA bundle for a TLS-inspecting corporate proxy or a private CA; "
        "it wins over REQUESTS_CA_BUNDLE. Verification always stays on.",
        "schema": {"type": ["string", "null"]},
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    # The port stays visible: besides emulators and private endpoints on other ports, Airflow 3.3.2's
    # list-page Test button refuses connections without a stored port (apache/airflow#73298).
    "hidden-fields": ["schema", "login"],
    "relabeling": {"host": "Endpoint", "password": "API key"},
    "placeholders": {
        "host": "https://<resource-name>.services.ai.azure.com",
        "password": "API key (leave empty for Microsoft Entra ID)",
        "port": "443 (optional)",
        "deployment": "my-mai-image-2-5",
        "auth_type": "api_key",
        "tenant_id": "00000000-0000-0000-0000-000000000000",
        "client_id": "00000000-0000-0000-0000-000000000000",
        "managed_identity_client_id": "00000000-0000-0000-0000-000000000000",
        "timeout": "300",
        "max_retries": "5",
        "rpm": "12",
        "max_response_mb": "64",
        "max_input_mb": "50",
        "rpm_redis_conn_id": "redis_default",
    },
}


#: The Airflow configuration options the provider reads, so that Airflow knows them (``airflow config
#: get-value mai ui_thumbnail_cache_mb``, ``airflow config list``) and gives their defaults. Values are
#: strings, as in airflow.cfg; tests/unit/test_get_provider_info.py keeps each default equal to the
#: one its reader falls back to.
CONFIG: dict[str, dict[str, Any]] = {
    "mai": {
        "description": "airflow-provider-mai: the UI plugin, in the api-server.",
        "options": {
            "ui_thumbnail_cache_mb": {
                "description": "Megabytes of image thumbnails each api-server worker process keeps in "
                "memory, least recently used dropped first (thumbnails are at most 40 KB; the default "
                "holds ~2,500). At least 1.",
                "version_added": "0.1.0",
                "type": "integer",
                "example": "64",
                "default": "32",
            },
        },
    },
}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow: name, versions, connection type, hooks, operators, the extra
    link and the configuration options.

    Its documentation-url is not set here: Airflow takes it from the package's ``Documentation``
    project URL (pyproject.toml) and would replace any value given.
    """
    from airflow_provider_mai import __version__

    return {
        "package-name": "airflow-provider-mai",
        "name": "Microsoft Foundry MAI image models",
        "description": "Generate and edit images with Microsoft Foundry's MAI image models "
        "(MAI-Image-2.5, 2.5-Flash, 2e, 2).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Microsoft Foundry MAI",
                "external-doc-url": "https://learn.microsoft.com/azure/ai-foundry/",
                "tags": ["ai", "azure"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Microsoft Foundry MAI",
                "python-modules": ["airflow_provider_mai.hooks.mai"],
            }
        ],
        "operators": [
            {
                "integration-name": "Microsoft Foundry MAI",
                "python-modules": ["airflow_provider_mai.operators.mai"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Microsoft Foundry MAI",
                "python-modules": ["airflow_provider_mai.triggers.mai"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "mai",
                "hook-class-name": "airflow_provider_mai.hooks.mai.MaiHook",
                "hook-name": "Microsoft Foundry MAI",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
        # `airflow providers links` lists it; the operators attach it (operator_extra_links).
        "extra-links": ["airflow_provider_mai.links.MaiImageLink"],
        "config": CONFIG,
    }
