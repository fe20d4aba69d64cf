"""Make one FineTuneJob manifest serve both a cluster and a laptop.

In a cluster, ``file://`` URIs name paths inside the pod (the image ships the examples at
``/opt/kubetune/examples``) and ``output.uri`` is usually ``s3://``. ``kubetune run`` reads
the same manifest locally: it maps in-pod path prefixes to local folders and can redirect the
output to a local folder, and says so, instead of requiring a second manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.manifest import ManifestError
from kubetune.api.v1alpha1 import FineTuneJob

IMAGE_EXAMPLES_DIR = "/opt/kubetune/examples"


@dataclass(frozen=True)
class PathMapping:
    pod_prefix: str  # absolute path as the manifest names it (inside the pod)
    local_dir: Path

    def apply(self, uri: str) -> str:
        prefix = f"file://{self.pod_prefix.rstrip('/')}/"
        if uri.startswith(prefix):
            return f"file://{self.local_dir.resolve()}/{uri[len(prefix) :]}"
        return uri


def default_mappings(manifest_path: Path) -> list[PathMapping]:
    """Map the image's examples folder to the folder holding the example manifests.

    Applied only where the in-pod path does not exist on this machine (a pod-like machine
    keeps its own paths).
    """
    if Path(IMAGE_EXAMPLES_DIR).exists():
        return []
    return [PathMapping(IMAGE_EXAMPLES_DIR, manifest_path.resolve().parent)]


def parse_mapping(text: str) -> PathMapping:
    pod, sep, local = text.partition("=")
    if not sep or not pod.startswith("/") or not local:
        raise ValueError(f"{text!r}: expected /path/in/pod=local/dir")
    return PathMapping(pod, Path(local))


def _map_uris(node: Any, mappings: list[PathMapping]) -> Any:
    if isinstance(node, dict):
        return {key: _map_uris(value, mappings) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_uris(value, mappings) for value in node]
    if isinstance(node, str) and node.startswith("file://"):
        for mapping in mappings:
            node = mapping.apply(node)
    return node


def localize(job: FineTuneJob, mappings: list[PathMapping], output_dir: Path | None) -> FineTuneJob:
    """The job with in-pod paths mapped to local folders and, optionally, a local output."""
    manifest = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    manifest["spec"] = _map_uris(manifest["spec"], mappings)
    if output_dir is not None:
        name = str(job.metadata.get("name") or job.metadata.get("generateName") or "job")
        target = (output_dir / name).resolve()
        # The name is checked as the API server checks it, so this holds; kept as the last word on
        # what --output-dir promises: nothing is written outside it.
        if not target.is_relative_to(output_dir.resolve()) or target == output_dir.resolve():
            raise ManifestError(str(output_dir), [("metadata.name", f"{name!r} would write outside --output-dir")])
        manifest["spec"]["output"]["uri"] = f"file://{target}/"
    return FineTuneJob.model_validate(manifest)
