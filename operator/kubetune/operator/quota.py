"""A hard cap on the FineTuneJobs a namespace trains at once, for clusters without Kueue (Kueue stays
the way to share GPUs fairly; this only bounds one team).

A job whose pre-flight passed waits in phase Queued (reason ``NamespaceQuota``) instead of creating
its training Job while the namespace already has as many unfinished training Jobs as the platform
allows; waiting jobs start in creation order as slots free. Decided from what exists (level-based):
the namespace's training Jobs and its FineTuneJobs, read under a per-namespace lock held until the
training Job is created, so two reconciles never take the last slot together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetune.api.contract import COMPONENT_LABEL, JOB_LABEL
from kubetune.api.v1alpha1 import TERMINAL_PHASES
from kubetune.operator.children import label_value
from kubetune.operator.status import job_condition

# How often a job waiting for a slot looks again (a slot frees when another job's training ends).
RECHECK_SECONDS = 5.0


def _finished(job: dict[str, Any]) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def waiting_reason(
    name: str, cap: int, jobs: Sequence[dict[str, Any]], finetunejobs: Sequence[dict[str, Any]]
) -> str | None:
    """Why FineTuneJob ``name`` may not create its training Job yet, or None when it may.

    ``jobs``: the namespace's Jobs made by kubetune; ``finetunejobs``: its FineTuneJobs. A slot is held
    by every unfinished training Job; a job is ahead of ``name`` when it is older, unfinished, has
    passed its pre-flight and has no training Job yet.
    """
    by_component: dict[str, dict[str, dict[str, Any]]] = {"trainer": {}, "preflight": {}}
    for job in jobs:
        labels = job.get("metadata", {}).get("labels") or {}
        if labels.get(COMPONENT_LABEL) in by_component:
            by_component[labels[COMPONENT_LABEL]][labels.get(JOB_LABEL, "")] = job
    training, preflights = by_component["trainer"], by_component["preflight"]
    running = sum(1 for job in training.values() if not _finished(job))

    def order(item: dict[str, Any]) -> tuple[str, str]:
        meta = item.get("metadata", {})
        return meta.get("creationTimestamp", ""), meta.get("name", "")

    me = next((f for f in finetunejobs if f.get("metadata", {}).get("name") == name), None)
    ahead = [
        f
        for f in finetunejobs
        if me is not None
        and order(f) < order(me)
        and (f.get("status") or {}).get("phase") not in TERMINAL_PHASES
        and label_value(f["metadata"]["name"]) not in training
        and job_condition(preflights.get(label_value(f["metadata"]["name"])), "Complete")
    ]
    if running + len(ahead) < cap:
        return None
    waiting = f"; {len(ahead)} waiting job(s) created earlier go first" if ahead else ""
    return (
        f"the namespace trains {running} of the {cap} FineTuneJobs the platform allows at once{waiting}; "
        "this one starts when a slot frees"
    )
