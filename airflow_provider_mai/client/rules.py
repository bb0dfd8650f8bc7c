"""What a request looks like on the wire, decided once for both transports (no I/O here).

:func:`encode` turns a validated :class:`~airflow_provider_mai.models.GenerateRequest` or
:class:`~airflow_provider_mai.models.EditRequest` into an :class:`HttpRequest`: the path and the
body parts (JSON for generations, a multipart form for edits). The transports send it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_mai.api import EDITS_PATH, GENERATIONS_PATH
from airflow_provider_mai.models import EditRequest, GenerateRequest, ImageRequest

#: The name of the image file part in an edit (the service reads the type from its content type).
EDIT_FILENAMES = {"image/png": "image.png", "image/jpeg": "image.jpg"}
#: The connection test waits this long at most for an answer, and this long for a connection.
PROBE_TIMEOUT = 10.0
PROBE_CONNECT_TIMEOUT = 5.0
#: The prompt of the connection test (a generation below the minimum size: no image is made).
PROBE_PROMPT = "connection test"


@dataclass(frozen=True)
class HttpRequest:
    """One POST to the service, as both transports send it.

    :param path: the API path (appended to the connection's endpoint).
    :param json_body: the JSON body (generations), or None.
    :param form: the multipart form fields (edits), or None.
    :param files: the multipart file parts, name -> (file name, bytes, content type), or None.
    """

    path: str
    json_body: Mapping[str, Any] | None = None
    form: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, bytes, str]] | None = field(default=None, repr=False)

    @property
    def operation(self) -> str:
        """The last part of the path (``generations`` or ``edits``), for log lines."""
        return self.path.rsplit("/", 1)[-1]


def encode(request: ImageRequest) -> HttpRequest:
    """The wire form of a (validated) request: JSON for generations, a multipart form for edits.

    ``extra_params`` go first so that the request's own fields always win (validation has refused
    any that try to set them; this is the second guard).
    """
    if isinstance(request, GenerateRequest):
        body = {
            **request.extra_params,
            "model": request.deployment,
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
        }
        return HttpRequest(GENERATIONS_PATH, json_body=body)
    assert isinstance(request, EditRequest)
    form = {
        **{k: form_value(v) for k, v in request.extra_params.items()},
        "model": request.deployment,
        "prompt": request.prompt,
    }
    files = {"image": (EDIT_FILENAMES[request.mime_type], request.image, request.mime_type)}
    return HttpRequest(EDITS_PATH, form=form, files=files)


def probe(deployment: str) -> HttpRequest:
    """The connection test: a generation deliberately below the minimum size (16x16).

    The service checks credentials and the deployment before the size, so a 400 about the size
    proves all three and makes (and bills) nothing.
    """
    body = {"model": deployment, "prompt": PROBE_PROMPT, "width": 16, "height": 16}
    return HttpRequest(GENERATIONS_PATH, json_body=body)


def form_value(value: Any) -> str:
    """A form field's text: booleans as ``true``/``false``, lists and dicts as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
