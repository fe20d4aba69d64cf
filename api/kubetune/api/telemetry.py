"""The metrics contract shared by operator and trainer: label names, the Pushgateway group,
and the environment variables that carry the trainer's metrics settings into its pod.

Metric names themselves live with the code that exports them and in ``docs/metrics.md``.
"""

from __future__ import annotations

# Every per-job series, from the operator or a trainer, names its FineTuneJob with these two
# labels. Not ``job``: Prometheus owns that label (the scrape job) and would rename ours.
NAMESPACE_LABEL = "namespace"
FINETUNEJOB_LABEL = "finetunejob"

# A trainer pushes to the Pushgateway under this group key, so its final values outlive the pod
# and the operator can delete exactly that group when the FineTuneJob is deleted.
PUSHGATEWAY_JOB = "kubetune-trainer"

# Trainer pod environment (set by the operator; also honoured by ``kubetune run``).
ENV_METRICS_PORT = "KUBETUNE_METRICS_PORT"
ENV_PUSHGATEWAY_URL = "KUBETUNE_PUSHGATEWAY_URL"
ENV_PUSH_INTERVAL = "KUBETUNE_PUSH_INTERVAL_SECONDS"


def pushgateway_grouping_key(namespace: str, finetunejob: str) -> dict[str, str]:
    return {NAMESPACE_LABEL: namespace, FINETUNEJOB_LABEL: finetunejob}
