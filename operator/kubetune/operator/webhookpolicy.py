"""Where a FineTuneJob's webhooks may send: the receivers the platform team allows.

A webhook URL is chosen by a tenant (in a Secret of its namespace) and the operator POSTs to it from
inside the cluster: aimed at a cluster-internal name, a loopback, link-local or private address, it
would make the operator a proxy into the cluster's network. So, as for S3 endpoints
(``storagepolicy``): such a receiver is refused unless the platform lists it exactly
(``policy.allowedWebhookEndpoints``, ``host`` or ``host:port``); any other passes the entry ``*``
(the default), or only the listed ones when ``*`` is left out. A receiver the platform did not list
must be ``https``, and every address its name resolves to must be public (a public name that
resolves inside the cluster is refused at each delivery, not only when the job was admitted).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from kubetune.api.addresses import non_public_reason, parse_address
from kubetune.operator.storagepolicy import ANY_PUBLIC_ENDPOINT, internal_host_reason, listed

HELM_VALUE = "policy.allowedWebhookEndpoints"
Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the operator then connects to one of them)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class WebhookPolicy:
    endpoints: tuple[str, ...]  # lower-case "host" or "host:port", or "*"

    @classmethod
    def parse(cls, entries: list[str]) -> WebhookPolicy:
        """From the operator's environment; ValueError naming the entry if one is not valid."""
        for entry in entries:
            if entry != ANY_PUBLIC_ENDPOINT and ("/" in entry or not entry.strip(".:")):
                raise ValueError(f"endpoint {entry!r}: expected host or host:port (no scheme or path), or '*'")
        return cls(tuple(entry.lower() for entry in entries))

    def refusal(self, url: str, *, resolver: Resolver | None = None) -> str | None:
        """Why the operator must not POST to ``url``, or None. With ``resolver``, the addresses the name
        resolves to are checked too (at delivery; admission checks the URL as written)."""
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            return "the webhook URL must be http(s)://host[:port]/path"
        if split.username is not None or split.password is not None:
            return "the webhook URL must not hold credentials before the host"
        if listed(url, self.endpoints):
            return None
        host = split.hostname.lower()
        if ANY_PUBLIC_ENDPOINT not in self.endpoints:
            return f"{host} is not in the platform's allowed webhook endpoints ({', '.join(self.endpoints) or 'none'})"
        if (internal := internal_host_reason(host)) is not None:
            return f"{host} is {internal}; the platform must list it in {HELM_VALUE}"
        if split.scheme != "https":
            return f"{host} is not listed by the platform, so the webhook must use https"
        if resolver is None:
            return None
        try:
            addresses = resolver(host, split.port or 443)
        except OSError as err:
            return f"{host} does not resolve ({err})"
        for address in addresses:
            if (why := non_public_reason(parse_address(address))) is not None:
                return f"{host} resolves to {address}, {why}; the platform must list it in {HELM_VALUE}"
        return None
