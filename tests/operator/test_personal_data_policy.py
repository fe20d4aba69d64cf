"""The platform's floor on personal data (Helm value policy.minPersonalDataProtection): a FineTuneJob
choosing a weaker ``pii`` policy than the platform allows is refused before any pod, at the field that
chose it; by default tenants cannot turn redaction off. Shown through the real operator on the API
emulator, both ways, and on the parsed spec for every field and floor."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.manifest import parse_monitor_spec, parse_spec
from kubetune.api.v1alpha1 import PersonalDataPolicy
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.validation import check_monitor_policy, check_policy
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec

SOURCE = JOB["spec"]["dataset"]["sources"][0]


def dataset(curation_pii: str | None = None, *source_pii: str | None) -> dict[str, Any]:
    sources = [{**SOURCE, "uri": f"s3://datasets/part-{i}.jsonl"} for i in range(max(1, len(source_pii)))]
    for source, pii in zip(sources, source_pii, strict=False):
        if pii is not None:
            source["pii"] = pii
    return {"sources": sources, **({"curation": {"pii": curation_pii}} if curation_pii else {})}


def config(floor: str | None = None) -> OperatorConfig:
    return OperatorConfig.from_env({} if floor is None else {"KUBETUNE_MIN_PERSONAL_DATA_PROTECTION": floor})


@pytest.mark.parametrize(
    ("floor", "data", "field", "chosen"),
    [
        (None, dataset("off"), "spec.dataset.curation.pii", "off"),
        (None, dataset("report"), "spec.dataset.curation.pii", "report"),
        (None, dataset(None, "redact", "off"), "spec.dataset.sources[1].pii", "off"),
        ("drop", dataset(), "spec.dataset.curation.pii", "redact"),
        ("drop", dataset("drop", None, "redact"), "spec.dataset.sources[1].pii", "redact"),
        ("report", dataset("redact", "off"), "spec.dataset.sources[0].pii", "off"),
    ],
)
def test_a_weaker_policy_than_the_floor_is_refused_at_the_field_that_chose_it(
    floor: str | None, data: dict[str, Any], field: str, chosen: str
) -> None:
    problem = check_policy(parse_spec({**JOB["spec"], "dataset": data}), "team-a", config(floor))
    assert problem is not None and problem.reason == "PersonalDataPolicyNotAllowed"
    assert problem.message.startswith(f"{field}: '{chosen}' handles personal data more weakly than the platform")
    assert "policy.minPersonalDataProtection" in problem.message


@pytest.mark.parametrize(
    ("floor", "data"),
    [
        (None, dataset()),  # a job that says nothing: the API's default, redact
        (None, dataset("drop", "redact")),
        ("off", dataset("off", "report")),
        ("report", dataset("off", "report", "drop")),  # the sources' own policies override the weak default
        ("drop", dataset(None, "drop")),
    ],
)
def test_the_floor_and_anything_stronger_pass(floor: str | None, data: dict[str, Any]) -> None:
    assert check_policy(parse_spec({**JOB["spec"], "dataset": data}), "team-a", config(floor)) is None


def test_the_default_floor_is_the_jobs_own_default_and_a_bad_value_stops_the_operator() -> None:
    assert config().personal_data.weakest == PersonalDataPolicy.REDACT
    assert config("").personal_data.allowed == (PersonalDataPolicy.REDACT, PersonalDataPolicy.DROP)
    with pytest.raises(ConfigError, match=r"policy\.minPersonalDataProtection\): 'none': expected one of off, report"):
        config("none")


def test_a_drift_monitors_retraining_template_is_held_to_the_floor() -> None:
    monitor = parse_monitor_spec(
        {
            "target": {"outputUri": JOB["spec"]["output"]["uri"], "channel": "prod"},
            "samples": {"uri": "s3://logs/tickets/requests/"},
            "retraining": {"template": {**JOB["spec"], "dataset": dataset("off")}},
        }
    )
    problem = check_monitor_policy(monitor, "team-a", config())
    assert problem is not None and problem.reason == "PersonalDataPolicyNotAllowed"
    assert problem.message.startswith("spec.retraining.template.dataset.curation.pii: 'off'")


def test_by_default_a_tenant_cannot_train_on_raw_personal_data(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(dataset=dataset(None, "off")))
    assert_rejected(
        cluster,
        "PersonalDataPolicyNotAllowed",
        "spec.dataset.sources[0].pii: 'off' handles personal data more weakly than the platform allows: "
        "choose redact or drop",
    )


def test_where_the_platform_lowers_the_floor_the_job_runs(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_MIN_PERSONAL_DATA_PROTECTION="report"):
        cluster.apply(with_spec(dataset=dataset("report")))
        preflight = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
    assert preflight["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kubetune", "preflight"]
