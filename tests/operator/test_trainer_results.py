"""The trainer's final figures on the real operator's /metrics, read from the FineTuneJob's status and
named by the FineTuneJob's metadata: a trainer writes its own status, so whatever it claims there
about whose figures they are is not believed.

The trainer's reports go through the test API server with the trainer's own token (its per-job Role),
as in a cluster; /metrics is scraped over HTTP.
"""

from __future__ import annotations

from typing import Any

from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, running_operator
from tests.operator.test_lifecycle import JOB, condition
from tests.scrape import Samples, get, parse, value

FIGURES = (
    "kubetune_finetunejob_train_loss",
    "kubetune_finetunejob_eval_loss",
    "kubetune_finetunejob_tokens_per_second",
    "kubetune_finetunejob_eval_metric",
    "kubetune_finetunejob_quality_gate_passed",
)
OURS = {"namespace": "default", "finetunejob": "tickets"}

# The tenant labels its FineTuneJob, and its trainer fills its status, to pass as another team's job.
SPOOFING_JOB: dict[str, Any] = {
    **JOB,
    "metadata": {"name": "tickets", "labels": {"namespace": "team-b", "finetunejob": "victim"}},
}
SPOOFED_RESULT = {
    "version": "v1",
    "promoted": True,
    "namespace": "team-b",  # not an API field: pruned by the API server, and never read
    "metrics": {
        "base.accuracy": 0.4,
        "tuned.accuracy": 0.9,
        "tuned.perplexity": 3.5,
        'tuned.accuracy{namespace="team-b",finetunejob="victim"}': 1.0,  # label injection
        "team-b.accuracy": 1.0,  # another "model"
        "tuned.victimScore": 1.0,  # a metric the API does not define: an unbounded label value
        "tuned.f1": 1e300,  # absurd
    },
}


def figures(text: str) -> Samples:
    return {key: number for key, number in parse(text).items() if key[0] in FIGURES}


def test_final_figures_are_exported_under_the_finetunejobs_own_namespace_and_name(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with running_operator(test_cluster, KUBETUNE_METRICS_PORT=str(port)):
        cluster.apply(SPOOFING_JOB)
        wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
        assert figures(get(url)) == {}, "nothing reported yet, no series"
        cluster.trainer_reports("tickets", {"preflight": {"passed": True, "message": "fits"}})
        cluster.finish_job("tickets-preflight", succeeded=True)
        wait_for(lambda: cluster.job("tickets-train"), what="training Job")
        cluster.start_job("tickets-train")

        # Absurd or impossible progress figures are left out; the others are exported.
        progress = {"step": 10, "totalSteps": 40, "trainLoss": 1.25, "evalLoss": -2.0, "tokensPerSecond": 1e300}
        cluster.trainer_reports("tickets", {"progress": progress})
        running = wait_for(
            lambda: (f := figures(get(url))) and value(f, "kubetune_finetunejob_train_loss", **OURS) == 1.25 and f,
            what="the training loss from the status",
        )
        assert running == {("kubetune_finetunejob_train_loss", frozenset(OURS.items())): 1.25}

        cluster.trainer_reports("tickets", {"progress": {**progress, "evalLoss": 1.5, "tokensPerSecond": 812.5}})
        cluster.trainer_reports("tickets", {"result": SPOOFED_RESULT})
        cluster.finish_job("tickets-train", succeeded=True)
        wait_for(lambda: condition(cluster, "QualityGatePassed"), what="the quality gate judged")
        gate = {"True": 1.0, "False": 0.0}[condition(cluster, "QualityGatePassed")["status"]]
        expected = {
            ("kubetune_finetunejob_train_loss", frozenset(OURS.items())): 1.25,
            ("kubetune_finetunejob_eval_loss", frozenset(OURS.items())): 1.5,
            ("kubetune_finetunejob_tokens_per_second", frozenset(OURS.items())): 812.5,
            ("kubetune_finetunejob_quality_gate_passed", frozenset(OURS.items())): gate,
            **{
                ("kubetune_finetunejob_eval_metric", frozenset({**OURS, "model": m, "metric": k}.items())): v
                for m, k, v in (("base", "accuracy", 0.4), ("tuned", "accuracy", 0.9), ("tuned", "perplexity", 3.5))
            },
        }
        wait_for(lambda: figures(get(url)) == expected, what="the final figures, and only those")
        text = get(url)
        assert "team-b" not in text and "victim" not in text, "nothing the tenant claimed reaches a label"
        assert cluster.finetunejob("tickets")["status"]["phase"] == "Succeeded"

        cluster.delete_finetunejob("tickets")
        wait_for(lambda: figures(get(url)) == {}, what="the series gone with the FineTuneJob")
        assert "# TYPE kubetune_finetunejob_eval_metric gauge" in get(url), "the families stay, empty"
