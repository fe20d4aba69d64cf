"""DNS rebinding: an S3 endpoint the platform admitted only as a public one is checked on the address
each connection reaches, not on a lookup of its own.

A resolver answering ``127.0.0.1`` for a public-looking name stands in for a rebinding DNS server
(``socket.getaddrinfo`` replaced for that one name, no root needed); the suite's S3 listens there. With
the operator's mark (``KUBETUNE_S3_PUBLIC_ENDPOINT_ONLY``) the trainer's ObjectStore refuses, naming
the endpoint and the address; without it (the platform listed the endpoint) the same store works.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from kubetune.api.addresses import LINK_LOCAL, LOOPBACK, PRIVATE_OR_RESERVED, non_public_reason, parse_address
from kubetune.api.contract import ENV_S3_PUBLIC_ENDPOINT_ONLY
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.storage import ObjectStore, StorageError

NAME = "s3.rebind.example"  # passes the operator's name check; its DNS answers a loopback address


@pytest.fixture()
def rebinding(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> Iterator[tuple[str, list[str]]]:
    """(the endpoint under NAME on the suite's S3 port, every lookup of NAME made)."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            lookups.append(host)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    endpoint = f"http://{NAME}:{urlsplit(s3_endpoint).port}"
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # moto reads a dotted Host as a virtual-hosted bucket unless told the name is an S3-compatible endpoint.
    monkeypatch.setenv("MOTO_S3_CUSTOM_ENDPOINTS", endpoint)
    yield endpoint, lookups


def test_a_name_answering_loopback_is_refused_on_the_address_connected(
    rebinding: tuple[str, list[str]], s3_endpoint: str, s3_bucket: str
) -> None:
    endpoint, lookups = rebinding
    store = ObjectStore(S3Spec(endpoint=endpoint, region="us-east-1"), public_endpoint_only=True)
    expected = f"spec.s3.endpoint {endpoint}: connected to 127.0.0.1, a loopback address"
    with pytest.raises(StorageError, match=expected):
        store.write_bytes(f"s3://{s3_bucket}/planted", b"x")
    assert lookups == [NAME], "one lookup, botocore's own: no check of ours by name, no retry"
    with pytest.raises(StorageError, match=expected):
        store.exists(f"s3://{s3_bucket}/anything")
    with pytest.raises(StorageError, match=expected):
        store.list(f"s3://{s3_bucket}/")
    listing = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(Bucket=s3_bucket)
    assert listing.get("KeyCount") == 0, "no request reached the server"


def test_the_same_endpoint_listed_by_the_platform_is_reached(rebinding: tuple[str, list[str]], s3_bucket: str) -> None:
    endpoint, lookups = rebinding
    store = ObjectStore(S3Spec(endpoint=endpoint, region="us-east-1"))  # no mark: listed by the platform
    store.write_bytes(f"s3://{s3_bucket}/data.jsonl", b"{}\n")
    assert store.read_bytes(f"s3://{s3_bucket}/data.jsonl") == b"{}\n"
    assert lookups, "the store went through the rebinding name"
    marked = ObjectStore(S3Spec(endpoint=endpoint, region="us-east-1"), public_endpoint_only=True)
    with pytest.raises(StorageError, match="a loopback address"):
        marked.read_bytes(f"s3://{s3_bucket}/data.jsonl")
    assert store.read_bytes(f"s3://{s3_bucket}/data.jsonl") == b"{}\n", "the check is on the marked client only"


def test_the_check_comes_before_tls(rebinding: tuple[str, list[str]]) -> None:
    """On https the peer is refused before a TLS ClientHello (the endpoint's name in it) is sent."""
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def accept() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                received.append(connection.recv(1024))

        thread = threading.Thread(target=accept)
        thread.start()
        endpoint = f"https://{NAME}:{listener.getsockname()[1]}"
        store = ObjectStore(S3Spec(endpoint=endpoint, region="us-east-1"), public_endpoint_only=True)
        with pytest.raises(StorageError, match=f"spec.s3.endpoint {endpoint}: connected to 127.0.0.1"):
            store.read_bytes("s3://bucket/key")
        thread.join(15)
    assert received == [b""], "the connection was closed without a byte sent"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("52.216.8.1", None),  # an S3 address
        ("2600:1f18::1", None),
        ("127.0.0.1", LOOPBACK),
        ("::1", LOOPBACK),
        ("169.254.169.254", LINK_LOCAL),
        ("::ffff:169.254.169.254", LINK_LOCAL),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", LINK_LOCAL),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", LINK_LOCAL),  # 6to4 of 169.254.169.254
        ("fe80::1%eth0", LINK_LOCAL),  # as getpeername() reports a zone
        ("fd00:ec2::254", PRIVATE_OR_RESERVED),  # the IPv6 instance metadata service
        ("10.96.0.1", PRIVATE_OR_RESERVED),
        ("100.64.0.10", PRIVATE_OR_RESERVED),  # shared address space (some clusters' pods)
        ("192.168.1.10", PRIVATE_OR_RESERVED),
        ("0.0.0.0", PRIVATE_OR_RESERVED),
        ("240.0.0.1", PRIVATE_OR_RESERVED),
    ],
)
def test_only_public_addresses_are_public(address: str, reason: str | None) -> None:
    assert non_public_reason(parse_address(address)) == reason


def test_the_operators_mark_is_read_from_the_pod_environment() -> None:
    assert TrainerEnvironment.from_env({ENV_S3_PUBLIC_ENDPOINT_ONLY: "true"}).s3_public_endpoint_only
    assert not TrainerEnvironment.from_env({}).s3_public_endpoint_only
