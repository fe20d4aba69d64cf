"""spec.output.oci on the control plane: only the registries the platform lists (it decides http or
https), the login by opted-in Secret, mounted in the training pod only. Pure parts as data; then
through the real operator against the test API server. The push itself, against a registry on
loopback, is tests/trainer/test_oci_push.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import contract
from kubetune.api.manifest import parse_spec
from kubetune.operator.children import Owner, build_preflight_job, build_training_job
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune_trainer.environment import TrainerEnvironment
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_hub_access import container_of, env_of
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec

REGISTRIES = "https://ghcr.io,http://registry.registry.svc:5000"
PUSH = {"repository": "registry.registry.svc:5000/team-a/tickets", "credentialsSecret": {"name": "registry-login"}}


def output(oci: dict[str, Any]) -> dict[str, Any]:
    return {**JOB["spec"]["output"], "oci": oci}


@pytest.mark.parametrize(
    "entry", ["ghcr.io", "https://ghcr.io/my-org", "ftp://ghcr.io", "https://user:pw@ghcr.io", "https://"]
)
def test_a_registry_listed_without_its_scheme_or_with_a_path_stops_the_operator(entry: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("registry.oci.registries")):
        OperatorConfig.from_env({"KUBETUNE_OCI_REGISTRIES": entry})


def test_the_training_pod_alone_gets_the_listed_registry_and_the_login_as_a_file() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_OCI_REGISTRIES": REGISTRIES})
    spec = parse_spec({**JOB["spec"], "output": output(PUSH)})
    owner = Owner("tickets", "ml", "uid-1")
    training = build_training_job(owner, spec, config)
    read = TrainerEnvironment.from_env(env_of(training))
    # The scheme is the platform's listing: plain HTTP for this in-cluster registry.
    assert read.oci_registry == "http://registry.registry.svc:5000"
    assert read.oci_auth_file == Path(contract.OCI_CREDENTIALS_DIR) / contract.OCI_AUTH_FILE
    volumes = {v["name"]: v for v in training["spec"]["template"]["spec"]["volumes"]}
    assert volumes["oci-credentials"]["secret"]["secretName"] == "registry-login"
    assert volumes["oci-credentials"]["secret"]["items"] == [
        {"key": ".dockerconfigjson", "path": contract.OCI_AUTH_FILE}
    ]
    assert {"name": "oci-credentials", "mountPath": contract.OCI_CREDENTIALS_DIR, "readOnly": True} in container_of(
        training
    )["volumeMounts"]
    preflight = build_preflight_job(owner, spec, config)  # pushes nothing: no registry, no login
    assert contract.ENV_OCI_REGISTRY not in env_of(preflight)
    assert "oci-credentials" not in json.dumps(preflight)
    # Without a login: anonymous, nothing mounted.
    anonymous = build_training_job(
        owner, parse_spec({**JOB["spec"], "output": output({"repository": "ghcr.io/a/b"})}), config
    )
    assert env_of(anonymous)[contract.ENV_OCI_REGISTRY] == "https://ghcr.io"
    assert contract.ENV_OCI_AUTH_FILE not in env_of(anonymous)


def test_through_the_operator_only_a_listed_registry_and_an_opted_in_login_pass(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    cluster.create_secret("registry-login", {".dockerconfigjson": '{"auths": {}}'})  # S3's label only
    with running_operator(test_cluster, KUBETUNE_OCI_REGISTRIES="https://ghcr.io"):
        cluster.apply(with_spec(output=output(PUSH)))
        assert_rejected(
            cluster,
            "RegistryNotAllowed",
            "spec.output.oci.repository: registry.registry.svc:5000 is not a registry this platform pushes to (ghcr.io)",
        )
    with running_operator(test_cluster, KUBETUNE_OCI_REGISTRIES=REGISTRIES):
        cluster.apply({**with_spec(output=output(PUSH)), "metadata": {"name": "tickets-login"}})
        wait_for(
            lambda: (cluster.finetunejob("tickets-login").get("status") or {}).get("phase") == "Failed", what="Failed"
        )
        validated = next(
            c for c in cluster.finetunejob("tickets-login")["status"]["conditions"] if c["type"] == "Validated"
        )
        assert validated["reason"] == "SecretNotAllowed"
        assert "spec.output.oci.credentialsSecret.name: Secret 'registry-login' is not labelled" in validated["message"]
        cluster.create_secret("registry-login-2", {".dockerconfigjson": '{"auths": {}}'}, registry_login=True)
        allowed = with_spec(output=output({**PUSH, "credentialsSecret": {"name": "registry-login-2"}}))
        cluster.apply({**allowed, "metadata": {"name": "tickets-oci"}})
        wait_for(lambda: cluster.job("tickets-oci-preflight"), what="the pre-flight Job")
