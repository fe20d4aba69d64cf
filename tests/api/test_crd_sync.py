"""The committed CRDs are exactly what the generator makes from the pydantic models."""

from __future__ import annotations

import pytest

from kubetune.api.crd import KINDS, Kind, crd_paths, render_crd_yaml
from tests.api.schema_tools import ROOT


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_committed_crds_are_generated_from_the_models(kind: Kind) -> None:
    expected = render_crd_yaml(kind)
    for path in crd_paths(ROOT, kind):
        assert path.is_file(), f"{path} is missing: run python -m kubetune.api.crd"
        assert path.read_text() == expected, f"{path} is stale: run python -m kubetune.api.crd"
