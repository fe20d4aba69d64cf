"""The operator at scale: the real ``kubetune-operator`` process driving 1,000 FineTuneJobs to completion.

    python bench/operator.py            # burst, sustained 20/s and 5 kills, 1,000 jobs each (~15 min)
    python bench/operator.py --smoke    # 30 jobs a scenario, one uncached pair, a planted fault (CI)

What runs: the test API server (tests/kubeapi, HTTPS, token authentication, RBAC and validation on, the
chart installed namespaced as ``helm install`` would) on a thread of this process; the operator as its
own process (the console script, the chart's ServiceAccount token in a kubeconfig); and, in a process
forked for them, fixtures playing the cluster around it, each with its own identity: the tenant creating FineTuneJobs, the Job controller
completing each pre-flight Job it sees, starting each training Job's pod (the kubelet reports it
running, the Job counts it ready), and the trainer reporting its result with the token of the job's own
ServiceAccount ``TRAINING_SECONDS`` later, just before its training Job completes (promoted: false, so
a lifecycle is Validating, Queued, Running, Succeeded).

Scenarios (each on a fresh API server and operator):
- ``burst``: every FineTuneJob created at once (four tenant threads as fast as the server answers);
- ``sustained``: created at a steady 20 a second;
- ``kills``: a burst with the operator SIGKILLed and restarted 5 times while it works.

Reported per scenario: time until every FineTuneJob has its pre-flight Job (and jobs per second),
p50/p99 latency from creation to its pre-flight Job, from the pre-flight Job's completion to the
training Job, and from the training Job's completion to ``Succeeded`` in status (each seen by the
fixtures' watches, so an upper bound); API requests per job counting every request the operator
process makes (reads, writes, watches, Events, kopf's own patches), CPU-seconds per job and peak RSS
of the operator, and the API server's own CPU apart. Every job is checked: exactly one pre-flight and
one training Job ever created (a second ``ADDED`` of a name, or another uid, is a duplicate) and
``Succeeded`` in the end; any other outcome is listed as a violation and the script exits 1.

Targets (issue 14): at 20 new jobs a second p99 creation -> pre-flight Job under 2 s; a burst of 1,000
drains within 60 s; peak memory under 200 MB; at most 15 API requests per job; no job missed or
duplicated through 5 kills (latency targets apply to runs without kills). Results go to
``docs/measurements/operator.json`` with the command, commit, machine and raw per-job timings.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from kubernetes import watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402
from measurement import cpu_model, git  # noqa: E402
from tests.builders import trainer_result  # noqa: E402
from tests.kubeapi.cluster import NAMESPACED, OPERATOR_NAMESPACE, Identity, TestCluster  # noqa: E402
from tests.kubeapi.runner import ApiServerThread  # noqa: E402
from tests.operator.cluster import Cluster  # noqa: E402
from tests.operator.conftest import free_port  # noqa: E402

from kubetune.api.contract import MANAGED_BY, MANAGED_BY_LABEL  # noqa: E402
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION  # noqa: E402

RESULTS = ROOT / "docs" / "measurements" / "operator.json"
NAMESPACE = "default"
PREFLIGHT_SUFFIX, TRAINING_SUFFIX = "-preflight", "-train"
# A real API server keeps about five minutes of watch history (etcd compaction): enough here for every
# client to resume its watch instead of listing again.
WATCH_HISTORY = 200_000
# How long a training pod runs in the fixtures: long enough for the operator to see it Running.
TRAINING_SECONDS = 1.0
SUSTAINED_RATE = 20.0  # new FineTuneJobs a second
TARGETS = {"p99PreflightSeconds": 2.0, "burstDrainSeconds": 60.0, "peakMegabytes": 200.0, "requestsPerJob": 15.0}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    rate: float | None  # FineTuneJobs created per second; None: all at once
    kills: int = 0
    kill_every: float = 6.0  # seconds between kills, from the first pre-flight Job seen
    read_cache: bool = True  # False: the baseline, every read a GET (KUBETUNE_READ_CACHE=false)
    plant: str | None = None  # a FineTuneJob whose first pre-flight Job is deleted: a fault the run must flag


def scenarios(jobs: int, kills: int) -> list[Scenario]:
    return [
        Scenario("burst", jobs, None),
        Scenario("burst-uncached", jobs, None, read_cache=False),
        Scenario("sustained", jobs, SUSTAINED_RATE),
        Scenario("sustained-uncached", jobs, SUSTAINED_RATE, read_cache=False),
        Scenario("kills", jobs, None, kills=kills),
    ]


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "dataset": {"sources": [{"uri": f"s3://datasets/{name}.jsonl"}]},
            "output": {"uri": f"s3://models/{name}/"},
        },
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_of(job: dict[str, Any]) -> str:
    refs = job["metadata"].get("ownerReferences") or [{}]
    return str(refs[0].get("name", ""))


# ---------------------------------------------------------------------------------------- what was seen
@dataclass
class Timeline:
    """Wall-clock instants (time.time()) per FineTuneJob, and every Job uid seen per Job name."""

    created: dict[str, float] = field(default_factory=dict)
    preflight_seen: dict[str, float] = field(default_factory=dict)
    preflight_done: dict[str, float] = field(default_factory=dict)
    training_seen: dict[str, float] = field(default_factory=dict)
    training_done: dict[str, float] = field(default_factory=dict)
    succeeded_seen: dict[str, float] = field(default_factory=dict)
    final_phase: dict[str, str] = field(default_factory=dict)
    job_uids: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def first(self, table: dict[str, float], key: str, at: float) -> bool:
        with self.lock:
            if key in table:
                return False
            table[key] = at
            return True

    _TABLES = ("created", "preflight_seen", "preflight_done", "training_seen", "training_done", "succeeded_seen")

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            tables: dict[str, Any] = {name: dict(getattr(self, name)) for name in self._TABLES}
            return {
                **tables,
                "final_phase": dict(self.final_phase),
                "job_uids": {k: sorted(v) for k, v in self.job_uids.items()},
            }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timeline:
        timeline = cls(**{name: data[name] for name in cls._TABLES}, final_phase=data["final_phase"])
        timeline.job_uids.update((name, set(uids)) for name, uids in data["job_uids"].items())
        return timeline


def violations(names: list[str], timeline: Timeline) -> list[str]:
    """Every job not driven exactly once through pre-flight and training to Succeeded."""
    found = []
    for name in names:
        for suffix in (PREFLIGHT_SUFFIX, TRAINING_SUFFIX):
            uids = timeline.job_uids.get(name + suffix, set())
            if len(uids) != 1:
                found.append(f"{name}: {len(uids)} Jobs {name}{suffix} created (one expected)")
        if timeline.final_phase.get(name) != "Succeeded":
            found.append(f"{name}: ended {timeline.final_phase.get(name) or 'without a phase'}, not Succeeded")
    return found


def latencies(start: dict[str, float], end: dict[str, float]) -> list[float]:
    return sorted(end[name] - start[name] for name in start if name in end)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "count": len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


# ---------------------------------------------------------------------------------------- the fixtures
def informer(
    identity: Identity,
    list_call: Callable[..., Any],
    on_object: Callable[[str, dict[str, Any]], None],
    stop: threading.Event,
    **query: Any,
) -> None:
    """List, then watch from the listing's resourceVersion, handing every object to ``on_object``; relist
    on 410 Gone. Handlers are idempotent, so a relist replaying objects is harmless."""
    while not stop.is_set():
        listing = identity.plain(list_call(NAMESPACE, **query))
        version = listing["metadata"]["resourceVersion"]
        for item in listing.get("items", []):
            on_object("ADDED", item)
        while not stop.is_set():
            try:
                # The events as plain JSON: the client's models (a V1Job per event) cost the fixtures
                # CPU that the operator and the API server share the machine with.
                stream = watch.Watch().stream(
                    list_call, NAMESPACE, resource_version=version, timeout_seconds=5, deserialize=False, **query
                )
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiException(status=obj.get("code", 500), reason=obj.get("reason"))
                    version = obj["metadata"]["resourceVersion"]
                    on_object(event["type"], obj)
                    if stop.is_set():
                        return
            except ApiException as err:
                if err.status == 410:
                    break  # relist
                time.sleep(0.2)


class Fixtures:
    """The Job controller and the trainer: each Job seen is completed (a training Job after the trainer
    reported); FineTuneJobs are watched for their phase."""

    def __init__(self, cluster: Cluster, timeline: Timeline, plant: str | None = None) -> None:
        self.cluster = cluster
        self.timeline = timeline
        self.plant = plant  # a FineTuneJob whose first pre-flight Job is deleted (a fault to detect)
        self.stop = threading.Event()
        self.actions = ThreadPoolExecutor(4, thread_name_prefix="fixture")
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._timer_order = itertools.count()
        self._timer_wakeup = threading.Condition()

    def start(self) -> Fixtures:
        controller = self.cluster.test_cluster.job_controller
        tenant = self.cluster.test_cluster.tenant
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

        def jobs() -> None:
            informer(controller, controller.batch.list_namespaced_job, self.on_job, self.stop, label_selector=selector)

        def finetunejobs() -> None:
            def listing(namespace: str, **query: Any) -> Any:
                return tenant.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **query)

            informer(tenant, listing, self.on_finetunejob, self.stop)

        for target in (jobs, finetunejobs, self._run_timers):
            thread = threading.Thread(target=target, daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(0.5)  # a watch blocked on its stream ends with the API server
        self.actions.shutdown(wait=True, cancel_futures=True)

    def on_job(self, kind: str, job: dict[str, Any]) -> None:
        at = time.time()
        meta = job["metadata"]
        name, owner = meta["name"], owner_of(job)
        with self.timeline.lock:
            known = meta["uid"] in self.timeline.job_uids[name]
            self.timeline.job_uids[name].add(meta["uid"])
        if known or kind == "DELETED":
            return
        if name.endswith(PREFLIGHT_SUFFIX):
            first = self.timeline.first(self.timeline.preflight_seen, owner, at)
            if first and owner == self.plant:
                # The planted fault: the pre-flight Job deleted before it ran; the operator makes it again,
                # and the run must report that job as one with two pre-flight Jobs.
                self.actions.submit(self._guarded, self._delete, name)
                return
            self.actions.submit(self._guarded, self._complete, name, owner, self.timeline.preflight_done)
        elif name.endswith(TRAINING_SUFFIX):
            self.timeline.first(self.timeline.training_seen, owner, at)
            self.actions.submit(self._guarded, self._train, name, owner, job)

    def on_finetunejob(self, kind: str, body: dict[str, Any]) -> None:
        at = time.time()
        name = body["metadata"]["name"]
        phase = (body.get("status") or {}).get("phase")
        if phase:
            with self.timeline.lock:
                self.timeline.final_phase[name] = phase
        if phase == "Succeeded":
            self.timeline.first(self.timeline.succeeded_seen, name, at)

    def _delete(self, job_name: str) -> None:
        """As ``kubectl delete job`` does (background: gone at once, its pods collected after)."""
        controller = self.cluster.test_cluster.job_controller
        controller.batch.delete_namespaced_job(job_name, NAMESPACE, propagation_policy="Background")

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception as err:  # recorded: the run reports it rather than hanging on a lost action
            self.errors.append(f"{args[0]}: {type(err).__name__}: {err}")

    def _complete(self, job_name: str, owner: str, done: dict[str, float]) -> None:
        now = _now()
        status = {
            "startTime": now,
            "active": 0,
            "succeeded": 1,
            "completionTime": now,
            "conditions": [{"type": "Complete", "status": "True", "reason": "Complete", "lastTransitionTime": now}],
        }
        self.cluster.set_job_status(job_name, status, NAMESPACE)
        self.timeline.first(done, owner, time.time())

    def _train(self, job_name: str, owner: str, job: dict[str, Any]) -> None:
        """The Job controller counts the training pod running and ready (no Pod object is made: the
        operator reads pods only when a trainer failed without a report)."""
        running = {"startTime": _now(), "active": 1, "ready": 1}
        self.cluster.set_job_status(job_name, running, NAMESPACE)
        account = job["spec"]["template"]["spec"]["serviceAccountName"]
        self.later(TRAINING_SECONDS, self._guarded, self._report_and_complete, job_name, owner, account)

    def _report_and_complete(self, job_name: str, owner: str, account: str) -> None:
        """The trainer reports with the token the kubelet mounts in its pod (its ServiceAccount's), then ends."""
        trainer = self.cluster._service_account_identity(NAMESPACE, account)
        result = {"status": {"result": trainer_result(promoted=False)}}
        trainer.custom.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, owner, result)
        self._complete(job_name, owner, self.timeline.training_done)

    def later(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action`` on the fixtures' pool after ``delay`` seconds (one timer thread for all)."""
        with self._timer_wakeup:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_order), action, args))
            self._timer_wakeup.notify()

    def _run_timers(self) -> None:
        with self._timer_wakeup:
            while not self.stop.is_set():
                if not self._timers:
                    self._timer_wakeup.wait(0.2)
                    continue
                due, _, action, args = self._timers[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._timer_wakeup.wait(min(wait, 0.2))
                    continue
                heapq.heappop(self._timers)
                self.actions.submit(action, *args)


# ---------------------------------------------------------------------------------------- the operator
@dataclass
class ProcessUse:
    cpu_seconds: float = 0.0
    peak_bytes: int = 0


def _proc_cpu(stat_path: str) -> float | None:
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class OperatorProcesses:
    """The operator process, restarted after each kill; its CPU and peak RSS sampled until it ends (a
    killed process's last sample stands for it: at most one sampling interval is lost per kill)."""

    def __init__(self, environment: dict[str, str], log: Path) -> None:
        self.environment = environment
        self.log = log
        self.uses: dict[int, ProcessUse] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True, name="sampler")

    def start(self) -> OperatorProcesses:
        self._spawn()
        self._sampler.start()
        return self

    def _spawn(self) -> None:
        executable = Path(sys.executable).parent / "kubetune-operator"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(executable)], env=self.environment, stdout=log, stderr=log)
        self.uses[self.process.pid] = ProcessUse()

    def _record(self, pid: int) -> None:
        cpu, peak = _proc_cpu(f"/proc/{pid}/stat"), _peak_rss(pid)
        use = self.uses[pid]
        if cpu is not None:
            use.cpu_seconds = cpu
        if peak is not None:
            use.peak_bytes = max(use.peak_bytes, peak)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            process = self.process
            if process is not None and process.poll() is None:
                self._record(process.pid)

    def kill_and_restart(self) -> None:
        assert self.process is not None
        self._record(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._spawn()

    def stop(self) -> None:
        if self.process is not None:
            self._record(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)  # what it does on the way out is no job's: not waited for long
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stop.set()
        self._sampler.join(5)

    @property
    def cpu_seconds(self) -> float:
        return sum(use.cpu_seconds for use in self.uses.values())

    @property
    def peak_bytes(self) -> int:
        return max((use.peak_bytes for use in self.uses.values()), default=0)


def operator_environment(test_cluster: TestCluster, *, read_cache: bool) -> dict[str, str]:
    """What the chart's Deployment gives the operator (a kubeconfig in place of the mounted token)."""
    return {
        "KUBETUNE_READ_CACHE": str(read_cache).lower(),
        **os.environ,
        "KUBECONFIG": str(test_cluster.operator_kubeconfig()),
        "KUBETUNE_NAMESPACES": ",".join(test_cluster.mode.namespaces),
        "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_HEALTH_PORT": str(free_port()),
        "KUBETUNE_TRAINER_IMAGE": "trainer:test",
        "KUBETUNE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
    }


def thread_cpu(thread: threading.Thread) -> float:
    return _proc_cpu(f"/proc/self/task/{thread.native_id}/stat") or 0.0


@contextmanager
def api_server(folder: Path) -> Iterator[ApiServerThread]:
    server = ApiServerThread(folder, history_capacity=WATCH_HISTORY).start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- one scenario
def create_all(cluster: Cluster, names: list[str], rate: float | None, timeline: Timeline) -> None:
    """The tenant creates every FineTuneJob: at ``rate`` a second from one schedule, or at once."""
    custom = cluster.test_cluster.tenant.custom

    def create(name: str) -> None:
        timeline.created[name] = time.time()
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, manifest(name))

    with ThreadPoolExecutor(4, thread_name_prefix="tenant") as tenant:
        if rate is None:
            list(tenant.map(create, names))
            return
        begin = time.monotonic()
        futures = []
        for index, name in enumerate(names):
            delay = begin + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(tenant.submit(create, name))
        for future in futures:
            future.result()


def operator_requests(apiserver: ApiServerThread, user: str) -> Counter[str]:
    counts = apiserver.call(lambda: dict(apiserver.server.requests_by_user))
    return Counter({f"{verb} {resource}": n for (who, verb, resource), n in counts.items() if who == user})


def wait_until_watching(apiserver: ApiServerThread, user: str, timeout: float = 60.0) -> None:
    """The operator's startup (imports, discovery, first listings) is no job's: wait for its watches."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        made = operator_requests(apiserver, user)
        if made["watch finetunejobs"] and made["watch jobs"]:
            return
        time.sleep(0.1)
    raise RuntimeError("the operator did not start watching within a minute (see its log)")


@dataclass
class ClusterSide:
    """What the forked cluster-side process and this one tell each other (multiprocessing, fork context)."""

    ready: Any  # the fixtures watch: the operator may start
    go: Any  # the operator watches: the tenant may create
    first_preflight: Any  # a pre-flight Job was seen: the kills may start
    kills_done: Any  # no more kills: anything late (a duplicate Job) can be looked for
    results: Any  # the cluster side's end of a Pipe

    @classmethod
    def make(cls, context: Any) -> tuple[ClusterSide, Any]:
        ours, theirs = context.Pipe()
        return cls(context.Event(), context.Event(), context.Event(), context.Event(), theirs), ours


def drive_cluster(
    cluster: Cluster, names: list[str], scenario: Scenario, deadline_seconds: float, side: ClusterSide
) -> None:
    """The cluster around the operator, in a process of its own (forked, so the identities and their
    tokens carry over): the fixtures, then the tenant's creations, until every job Succeeded or the
    deadline. The API server runs in the parent, where it has a Python interpreter to itself: sharing one
    with the fixtures, it waited for theirs (one core at most for both)."""
    timeline = Timeline()
    cpu_before = time.process_time()
    fixtures = Fixtures(cluster, timeline, scenario.plant).start()
    side.ready.set()
    side.go.wait()
    started = time.time()

    def announce_first_preflight() -> None:
        while not timeline.preflight_seen and not fixtures.stop.is_set():
            time.sleep(0.05)
        side.first_preflight.set()

    threading.Thread(target=announce_first_preflight, daemon=True).start()
    try:
        create_all(cluster, names, scenario.rate, timeline)
        created_all = time.time()
        deadline = started + deadline_seconds
        while time.time() < deadline and len(timeline.succeeded_seen) < len(names):
            time.sleep(0.2)
        side.kills_done.wait(max(0.0, deadline - time.time()))
        time.sleep(1.0)  # anything late (a duplicate Job) still gets seen
        finished = time.time()
    finally:
        fixtures.close()
    side.results.send(
        {
            "timeline": timeline.to_json(),
            "errors": fixtures.errors,
            "started": started,
            "createdAll": created_all,
            "finished": finished,
            "cpuSeconds": time.process_time() - cpu_before,
        }
    )


def run_scenario(scenario: Scenario, folder: Path, deadline_seconds: float) -> dict[str, Any]:
    names = [f"job-{index:04d}" for index in range(scenario.jobs)]
    context = multiprocessing.get_context("fork")
    with api_server(folder / "apiserver") as apiserver:
        test_cluster = TestCluster(apiserver, folder / "cluster", NAMESPACED)
        cluster = Cluster(test_cluster)
        operator_user = test_cluster.operator_user.name
        side, results = ClusterSide.make(context)
        cluster_side = context.Process(
            target=drive_cluster, args=(cluster, names, scenario, deadline_seconds, side), name="cluster-side"
        )
        cluster_side.start()
        if not side.ready.wait(60):
            raise RuntimeError("the fixtures did not start within a minute")
        operator = OperatorProcesses(
            operator_environment(test_cluster, read_cache=scenario.read_cache), folder / "operator.log"
        ).start()
        server_cpu_before = thread_cpu(apiserver._thread)
        try:
            wait_until_watching(apiserver, operator_user)
            side.go.set()
            kills = threading.Thread(target=_kills, args=(scenario, operator, side.first_preflight), daemon=True)
            kills.start()
            kills.join(deadline_seconds)
            side.kills_done.set()
            if not results.poll(deadline_seconds + 120):
                raise RuntimeError("the cluster side sent no results")
            seen = results.recv()
        finally:
            operator.stop()
            cluster_side.join(30)
            if cluster_side.is_alive():
                cluster_side.kill()
        server_cpu = thread_cpu(apiserver._thread) - server_cpu_before
        requests = operator_requests(apiserver, operator_user)
    timeline = Timeline.from_json(seen["timeline"])
    started, created_all, finished = seen["started"], seen["createdAll"], seen["finished"]
    all_preflight = max(timeline.preflight_seen.values()) if len(timeline.preflight_seen) == len(names) else None
    found = violations(names, timeline) + seen["errors"]
    planted = [v for v in found if scenario.plant and v.startswith(f"{scenario.plant}:")]
    found = [v for v in found if v not in planted]
    result = {
        "scenario": {
            "plant": scenario.plant,
            "name": scenario.name,
            "jobs": scenario.jobs,
            "rate": scenario.rate,
            "kills": scenario.kills,
            "killEvery": scenario.kill_every,
            "readCache": scenario.read_cache,
        },
        "seconds": round(finished - started, 2),
        "creationSeconds": round(created_all - started, 2),
        "allPreflightJobsAfterSeconds": round(all_preflight - started, 2) if all_preflight else None,
        "preflightJobsPerSecond": round(len(names) / (all_preflight - started), 1) if all_preflight else None,
        "creationToPreflightJob": summary(latencies(timeline.created, timeline.preflight_seen)),
        "preflightDoneToTrainingJob": summary(latencies(timeline.preflight_done, timeline.training_seen)),
        "trainingDoneToSucceeded": summary(latencies(timeline.training_done, timeline.succeeded_seen)),
        "operatorRequests": sum(requests.values()),
        "requestsPerJob": round(sum(requests.values()) / len(names), 2),
        "requestsByVerb": dict(requests.most_common()),
        "operatorCpuSeconds": round(operator.cpu_seconds, 2),
        "cpuSecondsPerJob": round(operator.cpu_seconds / len(names), 4),
        "operatorPeakMegabytes": round(operator.peak_bytes / 2**20, 1),
        "operatorProcesses": len(operator.uses),
        "apiServerCpuSeconds": round(server_cpu, 2),
        "fixturesCpuSeconds": round(seen["cpuSeconds"], 2),
        "violations": found[:50],
        "violationCount": len(found),
        "plantedFlagged": planted,
        "perJob": {
            name: {
                "created": timeline.created.get(name),
                "preflightSeen": timeline.preflight_seen.get(name),
                "preflightDone": timeline.preflight_done.get(name),
                "trainingSeen": timeline.training_seen.get(name),
                "trainingDone": timeline.training_done.get(name),
                "succeededSeen": timeline.succeeded_seen.get(name),
            }
            for name in names
        },
    }
    return result


def _kills(scenario: Scenario, operator: OperatorProcesses, first_preflight: Any) -> None:
    """SIGKILL the operator ``kills`` times, ``kill_every`` seconds apart, from the first pre-flight Job on."""
    if not scenario.kills:
        return
    first_preflight.wait()
    for _ in range(scenario.kills):
        time.sleep(scenario.kill_every)
        operator.kill_and_restart()


# ---------------------------------------------------------------------------------------- the report
def verdicts(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target against what was measured: value, target, met."""

    def check(value: float | None, target: float) -> dict[str, Any]:
        return {"value": value, "target": target, "met": value is not None and value <= target}

    sustained, burst = runs["sustained"], runs["burst"]
    ours = [run for run in runs.values() if run["scenario"]["readCache"]]
    return {
        "sustainedP99PreflightSeconds": check(
            sustained["creationToPreflightJob"]["p99"], TARGETS["p99PreflightSeconds"]
        ),
        "burstDrainSeconds": check(burst["allPreflightJobsAfterSeconds"], TARGETS["burstDrainSeconds"]),
        "peakMegabytes": check(max(run["operatorPeakMegabytes"] for run in ours), TARGETS["peakMegabytes"]),
        "requestsPerJob": check(
            max(run["requestsPerJob"] for run in ours if not run["scenario"]["kills"]), TARGETS["requestsPerJob"]
        ),
        "violations": check(float(sum(run["violationCount"] for run in runs.values())), 0.0),
    }


RATIOS = {
    "requestsPerJob": ("requestsPerJob",),
    "cpuSecondsPerJob": ("cpuSecondsPerJob",),
    "allPreflightJobsAfterSeconds": ("allPreflightJobsAfterSeconds",),
    "p99CreationToPreflightJob": ("creationToPreflightJob", "p99"),
    "operatorPeakMegabytes": ("operatorPeakMegabytes",),
}


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Baseline (every read a GET) over ours, per figure, for each scenario run both ways."""

    def figure(run: dict[str, Any], path: tuple[str, ...]) -> float | None:
        value: Any = run
        for part in path:
            value = value[part]
        return None if value is None else float(value)

    found: dict[str, dict[str, float | None]] = {}
    for name, run in runs.items():
        baseline = runs.get(f"{name}-uncached")
        if baseline is None or not run["scenario"]["readCache"]:
            continue
        found[name] = {}
        for label, path in RATIOS.items():
            ours, theirs = figure(run, path), figure(baseline, path)
            found[name][label] = round(theirs / ours, 2) if ours and theirs is not None else None
    return found


def print_run(run: dict[str, Any]) -> None:
    def ms(part: dict[str, Any], key: str) -> str:
        value = part[key]
        return "-" if value is None else f"{value:.2f}s"

    name = run["scenario"]["name"]
    print(f"== {name}: {run['scenario']['jobs']} jobs, {run['operatorProcesses'] - 1} kills, {run['seconds']} s")
    print(
        f"   every pre-flight Job after {run['allPreflightJobsAfterSeconds']} s ({run['preflightJobsPerSecond']} jobs/s)"
    )
    for label, key in (
        ("creation -> pre-flight Job", "creationToPreflightJob"),
        ("pre-flight done -> training Job", "preflightDoneToTrainingJob"),
        ("training done -> Succeeded", "trainingDoneToSucceeded"),
    ):
        print(f"   {label}: p50 {ms(run[key], 'p50')}, p99 {ms(run[key], 'p99')}, max {ms(run[key], 'max')}")
    print(
        f"   operator: {run['requestsPerJob']} requests/job, {run['cpuSecondsPerJob']} CPU-s/job, "
        f"peak {run['operatorPeakMegabytes']} MB; API server CPU {run['apiServerCpuSeconds']} s, "
        f"fixtures CPU {run['fixturesCpuSeconds']} s"
    )
    top = ", ".join(f"{verb} {count}" for verb, count in list(run["requestsByVerb"].items())[:8])
    print(f"   requests: {top}")
    print(f"   violations: {run['violationCount']}" + "".join(f"\n     {v}" for v in run["violations"][:10]))
    if run["scenario"]["plant"]:
        print(f"   planted fault flagged: {run['plantedFlagged'] or 'NO'}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def render_markdown(report: dict[str, Any]) -> str:
    """The docs section (docs/benchmarks.md), rendered from the recorded JSON; a test compares the two."""
    runs = report["runs"]
    jobs = next(iter(runs.values()))["scenario"]["jobs"]
    lines = [
        f"## The operator at scale: {jobs:,} FineTuneJobs",
        "",
        f"`{report['command']}` at commit `{report['commit'][:12]}` on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores; the API server, the fixtures and the operator share them). "
        "Uncached: the same operator with `KUBETUNE_READ_CACHE=false`, every read a GET.",
        "",
        "| scenario | every pre-flight Job after | creation -> pre-flight Job p50 / p99 | pre-flight done -> "
        "training Job p99 | training done -> Succeeded p99 | requests / job | CPU-s / job | peak RSS | "
        "API server / fixtures CPU | violations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        scenario = run["scenario"]
        how = "at once" if scenario["rate"] is None else f"{scenario['rate']:g}/s"
        kills = f", {scenario['kills']} kills" if scenario["kills"] else ""
        lines.append(
            f"| {name} ({how}{kills}) | {_seconds(run['allPreflightJobsAfterSeconds'])} | "
            f"{_seconds(run['creationToPreflightJob']['p50'])} / {_seconds(run['creationToPreflightJob']['p99'])} | "
            f"{_seconds(run['preflightDoneToTrainingJob']['p99'])} | {_seconds(run['trainingDoneToSucceeded']['p99'])} | "
            f"{run['requestsPerJob']:.1f} | {run['cpuSecondsPerJob']:.3f} | {run['operatorPeakMegabytes']:.0f} MB | "
            f"{run['apiServerCpuSeconds']:.0f} s / {run['fixturesCpuSeconds']:.0f} s | {run['violationCount']} |"
        )
    if report["ratios"]:
        lines += ["", "Baseline over ours, same run:", ""]
        for name, figures in report["ratios"].items():
            shown = ", ".join(f"{label} {value:.2f}x" for label, value in figures.items() if value is not None)
            lines.append(f"- {name}: {shown}")
    if report["verdicts"]:
        lines += ["", "| target | measured | target | met |", "|---|---:|---:|---|"]
        for key, verdict in report["verdicts"].items():
            value = "-" if verdict["value"] is None else f"{verdict['value']:.2f}"
            lines.append(f"| {key} | {value} | {verdict['target']:g} | {'yes' if verdict['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="30 jobs a scenario, 1 kill (CI)")
    parser.add_argument("--jobs", type=int, help="FineTuneJobs per scenario (default 1000; smoke 30)")
    names = [scenario.name for scenario in scenarios(1, 1)]
    parser.add_argument("--only", choices=names, action="append", help="run only these scenarios")
    parser.add_argument("--results", type=Path, default=None, help=f"where the JSON goes (default {RESULTS})")
    args = parser.parse_args(argv)
    jobs = args.jobs or (30 if args.smoke else 1000)
    if jobs < 1:
        parser.error("--jobs must be at least 1")
    kills = 1 if args.smoke else 5
    deadline = 120.0 if args.smoke else 900.0
    chosen = [s for s in scenarios(jobs, kills) if not args.only or s.name in args.only]
    if args.smoke:
        # The planted fault rides along in the smoke's burst: the run must flag that job, and only it.
        # One uncached pair (the burst) is enough for the smoke to show the ratio is taken.
        chosen = [
            replace(s, kill_every=2.0, plant="job-0003" if s.name == "burst" else None)
            for s in chosen
            if s.name != "sustained-uncached"
        ]
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as scratch:
        for scenario in chosen:
            runs[scenario.name] = run_scenario(scenario, Path(scratch) / scenario.name, deadline)
            print_run(runs[scenario.name])
    command = "python bench/operator.py" + (" --smoke" if args.smoke else "")
    result = {
        "command": command,
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": bool(git("status", "--porcelain", "--", "operator", "api", "bench/operator.py")),
        "machine": machine(),
        "targets": TARGETS,
        "runs": runs,
        "verdicts": verdicts(runs) if {"burst", "sustained"} <= runs.keys() else {},
        "ratios": ratios(runs),
    }
    for name, figures in result["ratios"].items():
        print(f"{name}, baseline/ours: " + ", ".join(f"{label} {value}x" for label, value in figures.items()))
    for key, verdict in result["verdicts"].items():
        print(
            f"target {key}: {verdict['value']} (target {verdict['target']}): {'met' if verdict['met'] else 'NOT met'}"
        )
    target = args.results or RESULTS
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n")
    print(f"recorded in {target}")
    print()
    print(render_markdown(result))
    missed_plant = [name for name, run in runs.items() if run["scenario"]["plant"] and not run["plantedFlagged"]]
    if missed_plant:
        print(f"the planted fault went unflagged in: {', '.join(missed_plant)}")
    return 1 if missed_plant or any(run["violationCount"] for run in runs.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
