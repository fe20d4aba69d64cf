"""Connections to an S3 endpoint the platform admitted only as a public one reach public addresses only.

The operator checked ``spec.s3.endpoint``'s name (``kubetune.operator.storagepolicy``), not what it
resolves to: a public-looking name whose DNS answers 169.254.169.254, 127.0.0.1 or a cluster address
(at once, or later: DNS rebinding) would otherwise turn the trainer into a proxy into the node or the
cluster. A lookup of our own before connecting proves nothing (the next answer may differ), so the
check is made on the socket itself: ``getpeername()`` of every connection the S3 client opens, the
address actually connected to, against the operator's own rule (``kubetune.api.addresses``).

Hook (the least invasive one botocore and urllib3 offer): botocore sends through urllib3 connection
pools that its ``URLLib3Session`` keeps in one ``PoolManager`` per client, and that manager's
``pool_classes_by_scheme`` is an instance attribute botocore itself sets. Only *this client's* manager
gets pool classes whose connection class is botocore's own with one override: ``_new_conn``, urllib3's
single place where a connection's TCP socket is opened (urllib3 1.26 and 2.x), checked there before
TLS or any byte of HTTP is sent, and closed when refused. No global patching: other clients, and
this process's other sockets, are untouched. Connections through a proxy (``HTTPS_PROXY``) reach the
proxy, which resolves the name itself; the check covers direct connections (the operator sets no
proxy on trainer pods).

A refusal is not retried: botocore would wrap it as a transient ``HTTPClientError`` and retry with
backoff; a handler registered first on the client's ``needs-retry`` event raises it as it is instead.
"""

from __future__ import annotations

import socket
from typing import Any

from kubetune.api.addresses import non_public_reason, parse_address


def peer_refusal(sock: socket.socket, what: str) -> str | None:
    """Why ``sock``'s peer may not be reached for ``what`` (e.g. ``spec.s3.endpoint https://...``), or None."""
    peer = str(sock.getpeername()[0])
    reason = non_public_reason(parse_address(peer))
    if reason is None:
        return None
    return (
        f"{what}: connected to {peer}, {reason}; the platform admitted this endpoint only as a public one "
        "(policy.allowedS3Endpoints '*'), so it must resolve to public addresses (the platform lists an "
        "endpoint exactly to allow it elsewhere)"
    )


def refuse_non_public_peers(client: Any, what: str, error: type[Exception]) -> None:
    """Make every connection ``client`` (a boto3 client not used yet) opens raise ``error`` naming
    ``what`` and the address when its peer is not a public address. Raises ``error`` if this botocore
    offers no place to check: never connect unchecked."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    def checked(sock: socket.socket) -> socket.socket:
        message = peer_refusal(sock, what)
        if message is not None:
            sock.close()
            raise error(message)
        return sock

    class CheckedHTTPConnection(AWSHTTPConnection):  # type: ignore[misc]
        def _new_conn(self) -> socket.socket:
            return checked(super()._new_conn())

    class CheckedHTTPSConnection(AWSHTTPSConnection):  # type: ignore[misc]
        def _new_conn(self) -> socket.socket:
            return checked(super()._new_conn())

    class CheckedHTTPConnectionPool(AWSHTTPConnectionPool):  # type: ignore[misc]
        ConnectionCls = CheckedHTTPConnection

    class CheckedHTTPSConnectionPool(AWSHTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = CheckedHTTPSConnection

    try:
        manager = client._endpoint.http_session._manager
        events = client.meta.events
        service = client.meta.service_model.service_id.hyphenize()
    except AttributeError as err:
        raise error(f"{what}: cannot check the addresses this botocore connects to ({err}); not connecting") from err
    manager.clear()  # no pool was made yet; none made before the check may serve a request
    manager.pool_classes_by_scheme = {"http": CheckedHTTPConnectionPool, "https": CheckedHTTPSConnectionPool}

    def not_retried(caught_exception: BaseException | None = None, **_: Any) -> None:
        wrapped = getattr(caught_exception, "kwargs", None)  # botocore's HTTPClientError(error=...)
        refused = wrapped.get("error") if isinstance(wrapped, dict) else None
        if isinstance(refused, error):
            raise refused

    events.register_first(f"needs-retry.{service}", not_retried, unique_id="kubetune-refuse-non-public-peers")
