"""The trainers' Pushgateway groups: the operator removes those of deleted FineTuneJobs.

Trainers push so that their final values outlive their pods; without this, the Pushgateway
would serve a deleted job's series forever. A group is deleted when its FineTuneJob's
deletion is seen, and a periodic sweep catches what that misses: a trainer whose last push
came after the deletion (a pod killed with its job checkpoints and pushes on the way out),
or jobs deleted while the operator was down.

With one Pushgateway per namespace (the URL names ``{namespace}``), each namespace's is swept: the
watched namespaces, or cluster-wide those that have FineTuneJobs.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Callable
from urllib.error import URLError

from prometheus_client import delete_from_gateway

from kubetune.api.contract import (
    FINETUNEJOB_LABEL,
    NAMESPACE_LABEL,
    NAMESPACE_PLACEHOLDER,
    PUSHGATEWAY_JOB,
    pushgateway_grouping_key,
)

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5.0
SWEEP_INTERVAL_SECONDS = 300.0
JobKey = tuple[str, str]  # (namespace, FineTuneJob name)


def delete_trainer_group(url: str, namespace: str, finetunejob: str) -> bool:
    """Delete the group; a Pushgateway that is down only costs a log line (the sweep retries)."""
    try:
        delete_from_gateway(
            url,
            job=PUSHGATEWAY_JOB,
            grouping_key=pushgateway_grouping_key(namespace, finetunejob),
            timeout=TIMEOUT_SECONDS,
        )
    except (URLError, OSError) as err:
        log.warning("could not delete the Pushgateway group of %s/%s at %s: %s", namespace, finetunejob, url, err)
        return False
    return True


def trainer_groups(url: str) -> set[JobKey]:
    """The (namespace, FineTuneJob) of every trainer group the Pushgateway holds."""
    with urllib.request.urlopen(f"{url}/api/v1/metrics", timeout=TIMEOUT_SECONDS) as response:
        groups = json.loads(response.read())["data"]
    keys = set()
    for group in groups:
        labels = group.get("labels") or {}
        if labels.get("job") == PUSHGATEWAY_JOB and NAMESPACE_LABEL in labels and FINETUNEJOB_LABEL in labels:
            keys.add((labels[NAMESPACE_LABEL], labels[FINETUNEJOB_LABEL]))
    return keys


def sweep(url: str, existing: Callable[[], set[JobKey]], watched: tuple[str, ...]) -> list[JobKey]:
    """Delete the groups of FineTuneJobs that no longer exist, in the namespaces this operator watches.

    Groups are listed before the jobs: a group seen first belongs to a job that already existed,
    so a job created meanwhile is never mistaken for a deleted one.
    """
    groups = trainer_groups(url)
    alive = existing()
    stale = sorted(key for key in groups if key not in alive and (not watched or key[0] in watched))
    for namespace, name in stale:
        delete_trainer_group(url, namespace, name)
    if stale:
        log.info("deleted the Pushgateway groups of %d deleted FineTuneJob(s)", len(stale))
    return stale


class Sweeper:
    """Runs :func:`sweep` now and every ``interval`` seconds in a background thread."""

    def __init__(
        self,
        url: str,
        existing: Callable[[], set[JobKey]],
        watched: tuple[str, ...],
        interval: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self.url, self.existing, self.watched, self.interval = url, existing, watched, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubetune-pushgateway-sweep", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            try:
                self.sweep_all()
            except Exception as err:  # the API server or the Pushgateway: try again next time
                log.warning("Pushgateway sweep at %s failed: %s", self.url, err)
            if self._stop.wait(self.interval):
                return

    def sweep_all(self) -> list[JobKey]:
        if NAMESPACE_PLACEHOLDER not in self.url:
            return sweep(self.url, self.existing, self.watched)
        stale: list[JobKey] = []
        for namespace in self.watched or sorted({namespace for namespace, _ in self.existing()}):
            url = self.url.replace(NAMESPACE_PLACEHOLDER, namespace)
            try:
                stale += sweep(url, self.existing, (namespace,))
            except (URLError, OSError) as err:  # a namespace without a Pushgateway: nothing to sweep
                log.info("Pushgateway sweep at %s skipped: %s", url, err)
        return stale

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_SECONDS * 2)
