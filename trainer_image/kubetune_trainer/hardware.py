"""The machine a run trains on: detected in the training pod, declared by the manifest in the pre-flight."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from kubetune.api.quantity import parse_quantity
from kubetune.api.v1alpha1 import ResourcesSpec
from kubetune_trainer.errors import ConfigurationError


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    gpu_count: int
    gpu_name: str
    gpu_memory_gib: float  # per GPU
    bf16: bool
    host_memory_gib: float
    cpu_count: int  # on one node
    nodes: int = 1  # pods training together (spec.resources.nodes), each with this hardware

    @property
    def processes(self) -> int:
        """Training processes in all: one per GPU (one on a node without), on every node."""
        return self.nodes * (max(1, self.gpu_count) if self.device == "cuda" else 1)

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        host = _host_memory_gib()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return cls(
                "cuda",
                torch.cuda.device_count(),
                props.name,
                props.total_memory / 2**30,
                bool(torch.cuda.is_bf16_supported()),
                host,
                cpus,
            )
        return cls("cpu", 0, "cpu", 0.0, False, host, cpus)


def _host_memory_gib() -> float:
    limit = _cgroup_memory_limit()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        total = 0.0
    return min(limit, total) if limit else total


def _cgroup_memory_limit() -> float | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 2**60:
            return int(raw) / 2**30
    return None


def training_hardware(resources: ResourcesSpec, *, preflight: bool, local: bool = False) -> Hardware:
    """The hardware the training Job will have: the pre-flight pod itself has no GPU, so it plans for the
    GPUs the manifest requests, with the memory it declares; every node of ``resources.nodes`` alike.
    ``local``: ``kubetune run`` on this machine alone, whatever the manifest's node count."""
    here = replace(Hardware.detect(), nodes=1 if local else resources.nodes)
    gpus = resources.gpus
    if preflight and gpus > 0 and here.device == "cpu":
        declared = resources.gpu_memory
        memory = quantity_gib(declared) if declared is not None else 0.0  # 0: unknown, fit not checked
        return Hardware(
            "cuda",
            gpus,
            "the requested GPU (spec.resources.gpuMemory)",
            memory,
            True,
            here.host_memory_gib,
            here.cpu_count,
            here.nodes,
        )
    return here


def quantity_gib(quantity: str) -> float:
    """A Kubernetes memory quantity (24Gi, 80G, 0) in GiB."""
    try:
        return float(parse_quantity(quantity)) / 2**30
    except ValueError as err:
        raise ConfigurationError(f"not a memory quantity: {quantity!r}") from err
