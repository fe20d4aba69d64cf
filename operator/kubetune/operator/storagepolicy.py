"""Where a FineTuneJob's pods may read and write: the S3 endpoints and the bucket prefixes the
platform team allows.

Endpoints. ``spec.s3.endpoint`` is a URL a tenant chooses, fetched from inside the cluster: aimed at
the instance metadata service, a loopback or link-local address or a cluster-internal name, it turns
the trainer into a proxy into the cluster's network. Such an endpoint is refused unless the platform
lists it exactly (``policy.allowedS3Endpoints``); other endpoints pass the entry ``*`` (the
default), or only those listed when ``*`` is left out. The chart's own default endpoint
(``s3.endpoint``) is the platform's choice and always allowed.

Prefixes. ``policy.allowedStoragePrefixes`` (``s3://bucket/prefix/``, ``gs://bucket/prefix/`` and
``az://account/container/prefix/`` entries, ``{namespace}`` replaced by the job's namespace) bounds
every ``s3://``, ``gs://`` and ``az://`` URI of the spec (base model, datasets, regression set, output,
checkpoints); empty allows any bucket. An ``az://`` entry names the storage account as well as the
container (container names are only unique within an account). The same list bounds the Hub:
``hf://owner/`` or ``hf://owner/name/`` admits those model repositories, ``hf://datasets/owner/``
those datasets; a list with no ``hf://`` entry admits no Hub repository, an empty one any.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from kubetune.api.addresses import non_public_reason, parse_address
from kubetune.api.driftmonitor import DriftMonitorSpec
from kubetune.api.prefixes import guarded, within
from kubetune.api.v1alpha1 import FineTuneJobSpec

ANY_PUBLIC_ENDPOINT = "*"
# Names that only resolve inside a cluster or a cloud's private network (the metadata service's
# metadata.google.internal and instance-data included); a name without a dot is a search-path name.
INTERNAL_SUFFIXES = (".local", ".localdomain", ".internal", ".svc", ".cluster.local", ".localhost")


@dataclass(frozen=True)
class StoragePolicy:
    endpoints: tuple[str, ...]  # lower-case "host" or "host:port", or "*"
    prefixes: tuple[
        str, ...
    ]  # "s3://bucket/", "gs://bucket/path/", "az://account/container/" (hf:// too), may hold {namespace}

    @classmethod
    def parse(cls, endpoints: list[str], prefixes: list[str], *, platform_endpoint: str | None) -> StoragePolicy:
        """From the operator's environment; ValueError naming the entry if one is not valid. The
        platform's own default endpoint is allowed whatever the list says, written out or not."""
        if platform_endpoint:
            split = urlsplit(platform_endpoint)
            endpoints = [*endpoints, f"{split.hostname}:{split.port}" if split.port else str(split.hostname)]
        for entry in endpoints:
            if entry != ANY_PUBLIC_ENDPOINT and ("/" in entry or not entry.strip(".:")):
                raise ValueError(f"endpoint {entry!r}: expected host or host:port (no scheme or path), or '*'")
        normalised = []
        for entry in prefixes:
            split = urlsplit(entry)
            if (
                split.scheme not in ("s3", "gs", "az", "hf")
                or not split.netloc
                or (split.scheme == "az" and not split.path.strip("/"))
                or split.query
                or split.fragment
                or ".." in entry
            ):
                raise ValueError(
                    f"prefix {entry!r}: expected s3://bucket/, gs://bucket/, az://account/container/ (each with an "
                    "optional path/), hf://owner/ or hf://datasets/owner/"
                )
            if split.scheme == "hf" and ("@" in entry or entry.rstrip("/") == "hf://datasets"):
                raise ValueError(
                    f"prefix {entry!r}: expected hf://owner/[name/] or hf://datasets/owner/[name/], no @revision"
                )
            normalised.append(entry if entry.endswith("/") else entry + "/")
        return cls(tuple(e.lower() for e in endpoints), tuple(normalised))

    def refusal(self, spec: FineTuneJobSpec | DriftMonitorSpec, namespace: str) -> tuple[str, str] | None:
        """(field, why) for the first endpoint or URI the policy refuses, else None (a DriftMonitor's
        retraining template included: every ``s3://``, ``gs://``, ``az://`` and ``hf://`` string of the spec is walked)."""
        if spec.s3.endpoint is not None and (why := self._endpoint_refusal(spec.s3.endpoint)) is not None:
            return "spec.s3.endpoint", why
        if self.prefixes:
            allowed = self.prefixes_for(namespace)
            for field, uri in guarded_uris(spec, "spec"):
                if not within(uri, allowed):
                    return field, f"{uri} is outside the storage this namespace may use ({', '.join(allowed)})"
        return None

    def prefixes_for(self, namespace: str) -> list[str]:
        """The prefixes a job of ``namespace`` may use (empty: any bucket)."""
        return [prefix.replace("{namespace}", namespace) for prefix in self.prefixes]

    def admitted_as_public(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is allowed only as "any public endpoint" (the ``*`` entry), not listed by
        the platform. Its name was checked, not what it will resolve to: the operator tells the trainer
        (``contract.ENV_S3_PUBLIC_ENDPOINT_ONLY``), which refuses a connection that reaches a
        non-public address (``kubetune_trainer.egress``)."""
        return not self._listed(endpoint) and ANY_PUBLIC_ENDPOINT in self.endpoints

    def _listed(self, endpoint: str) -> bool:
        return listed(endpoint, self.endpoints)

    def _endpoint_refusal(self, endpoint: str) -> str | None:
        if self._listed(endpoint):
            return None
        host = (urlsplit(endpoint).hostname or "").lower()
        if (internal := internal_host_reason(host)) is not None:
            return f"{endpoint} is {internal}; the platform must list it in policy.allowedS3Endpoints"
        if ANY_PUBLIC_ENDPOINT not in self.endpoints:
            return f"{endpoint} is not in the platform's allowed S3 endpoints ({', '.join(self.endpoints) or 'none'})"
        return None


def listed(url: str, entries: tuple[str, ...]) -> bool:
    """Whether the platform lists ``url``'s host (any port) or host:port in ``entries`` (lower-case)."""
    split = urlsplit(url)
    host = (split.hostname or "").lower()
    names = {host, f"{host}:{split.port}"} if split.port is not None else {host}
    return bool(names & set(entries))


def internal_host_reason(host: str) -> str | None:
    """Why ``host`` points inside the cluster or the node, or None for a public name or address."""
    try:
        address = parse_address(host)
    except ValueError:
        if host == "localhost" or "." not in host or host.endswith(INTERNAL_SUFFIXES):
            return "a cluster-internal name"
        return None
    # The trainer applies the same rule to the address it connects to (::ffff:169.254.169.254 is the
    # metadata service too).
    return non_public_reason(address)


def guarded_uris(model: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, value) of every ``s3://`` and ``hf://`` string in the spec, at the API's field names."""
    if isinstance(model, BaseModel):
        for name, field in type(model).model_fields.items():
            yield from guarded_uris(getattr(model, name), f"{path}.{field.alias or name}")
    elif isinstance(model, list):
        for index, item in enumerate(model):
            yield from guarded_uris(item, f"{path}[{index}]")
    elif isinstance(model, str) and guarded(model):
        yield path, model


def reads_hub(spec: FineTuneJobSpec) -> bool:
    """Whether a job's pods may read the Hub (the platform's endpoint): it names an ``hf://`` URI, or it
    starts from or learns from a published version, whose base model may be a Hub repository (known
    only when the trainer reads the version's manifest)."""
    named = any(uri.startswith("hf://") for _, uri in guarded_uris(spec, "spec"))
    from_version = spec.continual is not None and spec.continual.from_version is not None
    return named or from_version or spec.method.distill is not None
