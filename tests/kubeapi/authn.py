"""Bearer-token authentication: every request must carry a token the server issued and has not revoked.

kube-apiserver answers 401 to a missing, unknown or revoked token (anonymous access disabled, as
on every hardened cluster); the body is a ``Status`` with reason ``Unauthorized``.
"""

from __future__ import annotations

import secrets
import threading

from tests.kubeapi.model import UserInfo


class TokenAuthenticator:
    def __init__(self) -> None:
        self._tokens: dict[str, UserInfo] = {}
        self._lock = threading.Lock()  # tests issue and revoke from their own thread

    def issue(self, user: UserInfo) -> str:
        """A new token for ``user`` (what the TokenRequest API does for a ServiceAccount)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = user
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def revoke_user(self, user: UserInfo) -> None:
        with self._lock:
            for token in [t for t, u in self._tokens.items() if u == user]:
                del self._tokens[token]

    def authenticate(self, authorization: str | None) -> UserInfo | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self._tokens.get(token.strip())
