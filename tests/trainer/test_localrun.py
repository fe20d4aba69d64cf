"""``kubetune run`` on a laptop: in-pod paths mapped to local folders, output kept inside --output-dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.manifest import ManifestError, parse_manifest
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune_trainer.localrun import PathMapping, localize
from tests.builders import minimal_spec


def job(**metadata: str) -> FineTuneJob:
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": metadata}
    return parse_manifest({**document, "spec": minimal_spec()})


@pytest.mark.parametrize("name", ["a", "a..b", "a.b-c", ("a" * 62 + ".") * 4 + "a"])
def test_every_valid_name_publishes_inside_the_output_dir(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    uri = localize(job(name=name), [], out).spec.output.uri
    assert uri == f"file://{(out / name).resolve()}/"


def test_a_generated_name_publishes_under_its_prefix(tmp_path: Path) -> None:
    assert localize(job(generateName="tune-"), [], tmp_path).spec.output.uri == f"file://{tmp_path.resolve()}/tune-/"
    with pytest.raises(ManifestError, match=r"metadata\.generateName"):
        job(generateName="../")


@pytest.mark.parametrize("name", ["..", "../escape", "/etc", "."])
def test_a_name_that_would_leave_the_output_dir_is_refused(tmp_path: Path, name: str) -> None:
    """Names like these never pass the API's check; built past it, --output-dir still holds."""
    unchecked = job(name="x").model_copy(update={"metadata": {"name": name}})
    with pytest.raises(ManifestError, match="outside --output-dir"):
        localize(unchecked, [], tmp_path / "out")


def test_in_pod_paths_are_mapped_and_others_kept(tmp_path: Path) -> None:
    spec = minimal_spec()
    spec["dataset"]["sources"] = [{"uri": "file:///opt/kubetune/examples/x.jsonl"}, {"uri": "file:///data/y.jsonl"}]
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "m"}, "spec": spec}
    mapped = localize(parse_manifest(document), [PathMapping("/opt/kubetune/examples", tmp_path)], None)
    assert [s.uri for s in mapped.spec.dataset.sources] == [
        f"file://{tmp_path.resolve()}/x.jsonl",
        "file:///data/y.jsonl",
    ]
