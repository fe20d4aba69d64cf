"""How every kubetune process reaches the Kubernetes API: one bootstrap for both planes.

In a pod, the ServiceAccount's token and CA (in-cluster configuration); anywhere else, a
kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``). There is no other way in: no plain-host
shortcut, so tests start the operator and the trainer exactly as a cluster does.

Credentials change while a process runs: the kubelet rotates projected ServiceAccount tokens
(they expire within the hour) and a kubeconfig may be rewritten. :class:`ReauthenticatingApiClient`
re-reads them when the API server answers 401 and repeats the request once; a request the server
refused as unauthenticated was not acted on, so repeating it is safe.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.config.incluster_config import SERVICE_HOST_ENV_NAME, InClusterConfigLoader

# How often a loader's credential refresh hook may run (see ThrottledRefresh).
REFRESH_INTERVAL_SECONDS = 5.0

# Where the kubelet mounts a pod's ServiceAccount token and the cluster CA.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class NoCredentials(RuntimeError):
    """Neither in-cluster configuration nor a kubeconfig is available."""


def _in_cluster(service_account_dir: Path) -> bool:
    return bool(os.environ.get(SERVICE_HOST_ENV_NAME)) and (service_account_dir / "token").is_file()


class ThrottledRefresh:
    """A configuration's ``refresh_api_key_hook``, run at most once every ``interval`` seconds.

    The client runs the hook before every request, and both loaders' hooks re-assign the host, which
    re-reads the proxy settings from the whole environment: measured at a fifth of the operator's CPU
    per request. What the hook refreshes (a token file re-read after its minute, an expired
    kubeconfig token) does not change within seconds, and a 401 re-reads everything anyway.
    """

    def __init__(self, hook: Callable[[client.Configuration], None], interval: float = REFRESH_INTERVAL_SECONDS):
        self.hook = hook
        self.interval = interval
        self._last = -float("inf")

    def __call__(self, configuration: client.Configuration) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self.hook(configuration)
        # Both loaders install a new hook each time theirs runs: follow it and stay in front.
        installed = configuration.refresh_api_key_hook
        if installed is not self:
            self.hook = installed
            configuration.refresh_api_key_hook = self


def _throttle_refresh(configuration: client.Configuration) -> client.Configuration:
    hook = configuration.refresh_api_key_hook
    if hook is not None and not isinstance(hook, ThrottledRefresh):
        configuration.refresh_api_key_hook = ThrottledRefresh(hook)
    return configuration


def load_configuration(service_account_dir: Path | None = None) -> client.Configuration:
    """A fresh client configuration: in-cluster when the pod's ServiceAccount is mounted, else kubeconfig."""
    directory = service_account_dir or SERVICE_ACCOUNT_DIR
    configuration = client.Configuration()
    if _in_cluster(directory):
        InClusterConfigLoader(
            token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt")
        ).load_and_set(configuration)
        return _throttle_refresh(configuration)
    try:
        # persist_config=False: never write a refreshed token back into the user's kubeconfig.
        # $KUBECONFIG read now, not when the kubernetes package was imported (its default is frozen then).
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration, persist_config=False
        )
    except (config.ConfigException, OSError) as err:
        raise NoCredentials(
            "no Kubernetes credentials: not in a pod with a ServiceAccount token "
            f"({directory}/token and $KUBERNETES_SERVICE_HOST), and no usable kubeconfig: {err}"
        ) from err
    return _throttle_refresh(configuration)


@dataclass(frozen=True)
class Credentials:
    """What a configuration says about reaching the API, in plain fields (for kopf's login)."""

    server: str
    token: str | None
    ca_path: str | None
    insecure: bool
    certificate_path: str | None
    private_key_path: str | None

    @classmethod
    def of(cls, configuration: client.Configuration) -> Credentials:
        header = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        token = header.split(" ", 1)[1] if header and " " in header else header
        return cls(
            server=configuration.host,
            token=token or None,
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
        )


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def is_plain_json(value: Any) -> bool:
    """Whether ``value`` is made of dicts with string keys, lists and JSON scalars only."""
    kind = type(value)
    if kind is dict:
        return all(type(key) is str and is_plain_json(item) for key, item in value.items())
    if kind is list:
        return all(is_plain_json(item) for item in value)
    return kind in _JSON_SCALARS


class ReauthenticatingApiClient(client.ApiClient):
    """A Kubernetes ApiClient that re-reads its credentials once when the server answers 401."""

    def sanitize_for_serialization(self, obj: Any) -> Any:
        # kubetune sends plain JSON bodies, which the library's generic walk (eight isinstance checks
        # and a copy per node) turned into a tenth of the operator's CPU under load (cProfile,
        # bench/operator.py): one type check per node, and the body itself goes out unchanged.
        if is_plain_json(obj):
            return obj
        return super().sanitize_for_serialization(obj)

    def __init__(self, service_account_dir: Path | None = None) -> None:
        self._service_account_dir = service_account_dir
        super().__init__(load_configuration(service_account_dir))

    def reload_credentials(self) -> None:
        configuration = load_configuration(self._service_account_dir)
        old_rest: Any = getattr(self, "rest_client")  # noqa: B009  (untyped in the client library)
        self.configuration = configuration
        setattr(self, "rest_client", type(old_rest)(configuration))  # noqa: B010
        old_rest.pool_manager.clear()

    def call_api(self, method: str, url: str, header_params: Any = None, *args: Any, **kwargs: Any) -> Any:
        response = super().call_api(method, url, header_params, *args, **kwargs)
        if response.status != 401:
            return response
        self.reload_credentials()
        headers = dict(header_params or {})
        for name in [key for key in headers if key.lower() == "authorization"]:
            del headers[name]
        authorization = self.configuration.auth_settings().get("BearerToken")
        if authorization:
            headers[authorization["key"]] = authorization["value"]
        return super().call_api(method, url, headers, *args, **kwargs)
