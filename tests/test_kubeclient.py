"""kubetune.kubeclient, the one way operator and trainer reach the API: credentials are sent, verified
over TLS, read from a kubeconfig or the pod's ServiceAccount files, and re-read when revoked."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client import configuration as client_configuration
from kubernetes.client.rest import ApiException

from kubetune import kubeclient
from kubetune.kubeclient import Credentials, NoCredentials, ReauthenticatingApiClient, load_configuration
from tests.kubeapi.model import UserInfo
from tests.kubeapi.runner import ApiServerThread
from tests.kubeapi.server import version_info

ACCOUNT = UserInfo.service_account("ml", "trainer")


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        body = json.dumps(version_info()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_token_kubeconfig_sends_a_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes==36.0.0 sent no Authorization header at all; this fails on such a client."""
    recorder = http.server.HTTPServer(("127.0.0.1", 0), _RecordingHandler)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{recorder.server_port}"}}],
                "users": [{"name": "u", "user": {"token": "s3cr3t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    _RecordingHandler.seen = []
    try:
        client.VersionApi(ReauthenticatingApiClient()).get_code()
    finally:
        recorder.shutdown()
    assert _RecordingHandler.seen == ["Bearer s3cr3t"]


def test_in_cluster_configuration_reads_the_mounted_token_and_ca(
    apiserver: ApiServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = apiserver.service_account_files(ACCOUNT, tmp_path / "serviceaccount")
    host, port = apiserver.url.removeprefix("https://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.setattr(kubeclient, "SERVICE_ACCOUNT_DIR", folder)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    api = ReauthenticatingApiClient()
    assert client.VersionApi(api).get_code().git_version == "v1.33.0"
    credentials = Credentials.of(load_configuration())
    assert credentials.server == apiserver.url and credentials.ca_path == str(folder / "ca.crt")
    assert credentials.token == (folder / "token").read_text() and not credentials.insecure


def test_the_server_certificate_is_verified(
    apiserver: ApiServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = apiserver.kubeconfig(ACCOUNT, tmp_path / "config")
    document = yaml.safe_load(kubeconfig.read_text())
    other_ca = ApiServerThread(tmp_path / "other").pki  # a different cluster's CA
    document["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(other_ca.ca_pem).decode()
    kubeconfig.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.VersionApi(ReauthenticatingApiClient()).get_code()


def _credentials(
    source: str, token: str, apiserver: ApiServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], None]:
    """Credentials holding ``token``, from mounted ServiceAccount files or a kubeconfig; returns how to
    put a new token in their place (what the kubelet does to a projected token, or an admin to a kubeconfig)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if source == "in-cluster":
        folder = apiserver.service_account_files(ACCOUNT, tmp_path / "serviceaccount", token)
        host, port = apiserver.url.removeprefix("https://").split(":")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        monkeypatch.setattr(kubeclient, "SERVICE_ACCOUNT_DIR", folder)

        def rotate_file(new: str) -> None:
            (folder / "token").write_text(new)

        return rotate_file
    path = apiserver.kubeconfig(ACCOUNT, tmp_path / "config", token)
    monkeypatch.setenv("KUBECONFIG", str(path))

    def rotate_kubeconfig(new: str) -> None:
        apiserver.kubeconfig(ACCOUNT, path, new)

    return rotate_kubeconfig


@pytest.mark.parametrize("source", ["in-cluster", "kubeconfig"])
def test_a_revoked_token_is_replaced_by_rereading_the_credentials(
    source: str, apiserver: ApiServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_token = apiserver.issue_token(ACCOUNT)
    rotate = _credentials(source, old_token, apiserver, tmp_path, monkeypatch)
    api = client.VersionApi(ReauthenticatingApiClient())
    api.get_code()
    apiserver.server.authn.revoke(old_token)
    rotate(apiserver.issue_token(ACCOUNT))
    assert api.get_code().git_version == "v1.33.0", "the 401 made the client read the new token and retry"
    apiserver.server.authn.revoke_user(ACCOUNT)
    with pytest.raises(ApiException) as refused:
        api.get_code()
    assert refused.value.status == 401, "with no valid token anywhere, the 401 reaches the caller"


@pytest.mark.parametrize("source", ["in-cluster", "kubeconfig"])
def test_the_loaders_refresh_hook_runs_once_per_interval_not_before_every_request(
    source: str, apiserver: ApiServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both loaders' hooks re-read the proxy settings from the whole environment (the host setter):
    before every request that was a fifth of the operator's CPU. Counted here by those re-reads."""
    _credentials(source, apiserver.issue_token(ACCOUNT), apiserver, tmp_path, monkeypatch)
    proxy_lookups: list[int] = []
    real_getproxies = client_configuration.getproxies
    monkeypatch.setattr(client_configuration, "getproxies", lambda: proxy_lookups.append(1) or real_getproxies())
    clock = [1000.0]
    monkeypatch.setattr(kubeclient.time, "monotonic", lambda: clock[0])
    api = client.VersionApi(ReauthenticatingApiClient())
    proxy_lookups.clear()
    for _ in range(20):
        assert api.get_code().git_version == "v1.33.0"
    assert len(proxy_lookups) == 1, "the hook ran on the first request only"
    clock[0] += kubeclient.REFRESH_INTERVAL_SECONDS
    api.get_code()
    api.get_code()
    assert len(proxy_lookups) == 2, "and once more when the interval had passed"


def test_without_any_credentials_the_error_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setattr(kubeclient, "SERVICE_ACCOUNT_DIR", tmp_path / "no-serviceaccount")
    with pytest.raises(NoCredentials, match="no Kubernetes credentials"):
        load_configuration()


def test_plain_json_bodies_go_out_as_they_are_and_anything_else_as_the_library_serializes_it() -> None:
    api = object.__new__(ReauthenticatingApiClient)
    client.ApiClient.__init__(api, client.Configuration())
    library = client.ApiClient(client.Configuration())
    body = {"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"n": 1, "r": 0.5, "on": True, "no": None}}
    body["spec"]["items"] = [1, "a", {"k": [2.5]}]
    assert api.sanitize_for_serialization(body) is body, "a plain JSON body is sent without a copy"
    assert api.sanitize_for_serialization(body) == library.sanitize_for_serialization(body)
    for other in (
        {"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
        {"metadata": client.V1ObjectMeta(name="x", labels={"a": "b"})},
        {1: "an int key"},
        ("a", "tuple"),
    ):
        assert api.sanitize_for_serialization(other) == library.sanitize_for_serialization(other)
