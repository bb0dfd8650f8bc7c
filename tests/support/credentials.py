"""A fake azure-identity TokenCredential: Azure's token service is the one thing we cannot run here."""

from __future__ import annotations

import time

from azure.core.credentials import AccessToken


class FakeCredential:
    """A TokenCredential that hands out numbered tokens with a chosen lifetime."""

    def __init__(self, lifetime: float = 3600, fail: bool = False) -> None:
        self.lifetime = lifetime
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []

    @property
    def calls(self) -> int:
        return len(self.scopes)

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        if self.fail:
            raise RuntimeError("client secret 'hunter2-secret' was rejected by the authority")
        return AccessToken(f"entra-token-{self.calls}-" + "t" * 60, int(time.time() + self.lifetime))
