"""What the MAI image API documents, in one place: paths, the Entra ID scope and the size rules.

A leaf module (it imports nothing), so validation, settings, errors and the client share one copy.
"""

from __future__ import annotations

GENERATIONS_PATH = "/mai/v1/images/generations"
EDITS_PATH = "/mai/v1/images/edits"
#: The Microsoft Entra ID scope a bearer token must be issued for.
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
#: Each side of a generated image is at least this many pixels.
MIN_SIDE = 768
#: Width x height of a generated image is at most this many pixels.
MAX_PIXELS = 1_048_576
#: The service accepts 32,000 tokens of prompt. Tokens cannot be counted exactly client-side;
#: at ~4 characters a token this many characters is certainly past the limit.
MAX_PROMPT_CHARS = 128_000
#: Deployments of these models accept edits (the service is the judge; this is for messages).
EDIT_MODELS_TEXT = "MAI-Image-2.5 and 2.5-Flash"
#: Request fields a generation sets itself: ``extra_params`` cannot override them.
GENERATE_OWN_FIELDS = frozenset({"model", "prompt", "image", "width", "height"})
#: Request fields an edit sets itself (``width``/``height`` may be passed, under the size rule).
EDIT_OWN_FIELDS = frozenset({"model", "prompt", "image"})
