"""A load generator for the test API server's cost test, run as its own process (the other CPU core).

``python -m tests.kubeapi.load URL CA TOKEN REQUESTS`` sends an operator-like mix of requests over
a few keep-alive connections and prints one JSON line: how many of each kind were answered, by
status code.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
from collections import Counter

import aiohttp

FTJ = "/apis/kubetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/{name}"
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
CONNECTIONS = 8


def plan(requests: int, jobs: int, namespaces: int) -> list[tuple[str, str, object | None]]:
    """(method, path, body): what an operator reconciling many jobs does, in proportion: mostly reads
    of the job and its children, and a status write when something changed."""
    rng = random.Random(0)
    plan: list[tuple[str, str, object | None]] = []
    for index in range(requests):
        job = rng.randrange(jobs)
        ns, name = f"ns-{job % namespaces}", f"job-{job}"
        roll = rng.random()
        if roll < 0.40:
            plan.append(("GET", FTJ.format(ns=ns, name=name), None))
        elif roll < 0.70:
            plan.append(("GET", f"{JOBS.format(ns=ns)}/{name}-train", None))
        elif roll < 0.85:
            plan.append(("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}-spec", None))
        elif roll < 0.95:
            plan.append(("GET", f"{JOBS.format(ns=ns)}?labelSelector=kubetune.dev/job={name}", None))
        else:  # a status write: what changes when a job moves on
            plan.append(("PATCH", FTJ.format(ns=ns, name=name) + "/status", {"status": {"progress": {"step": index}}}))
    return plan


async def _run(url: str, ca: str, token: str, requests: int, jobs: int, namespaces: int) -> Counter[str]:
    context = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    requests_planned = plan(requests, jobs, namespaces)
    answered: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=context)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:

        async def worker(share: list[tuple[str, str, object | None]]) -> None:
            for method, path, body in share:
                kwargs: dict[str, object] = {}
                if body is not None:
                    kwargs = {"data": json.dumps(body), "headers": {"Content-Type": "application/merge-patch+json"}}
                async with session.request(method, path, **kwargs) as response:  # type: ignore[arg-type]
                    await response.read()
                    answered[f"{method} {response.status}"] += 1

        await asyncio.gather(*(worker(requests_planned[i::CONNECTIONS]) for i in range(CONNECTIONS)))
    return answered


def main() -> None:
    url, ca, token, requests, jobs, namespaces = sys.argv[1:7]
    answered = asyncio.run(_run(url, ca, token, int(requests), int(jobs), int(namespaces)))
    print(json.dumps(answered))


if __name__ == "__main__":
    main()
