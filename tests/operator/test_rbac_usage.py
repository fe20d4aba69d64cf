"""The chart grants the operator exactly what it uses: every grant used, every use granted.

The test API server records every authorization decision it makes for the operator's
ServiceAccount, including those it makes on the operator's behalf (RBAC escalation checks when the
operator creates a trainer Role, and OwnerReferencesPermissionEnforcement when a child blocks its
owner's deletion). Over the whole operator suite, in both RBAC modes, that is the set of grants the
operator needs; ``helm template`` gives the set the chart grants. They must be equal.

This test runs after the rest of the operator suite (tests/conftest.py orders it last). Under
pytest-xdist it waits until the other workers have finished their operator tests and merges what each
published (tests/operator/conftest.py). Run alone, or with only part of the suite selected, it first runs
the whole operator suite in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kubeapi.audit import Audit
from tests.kubeapi.cluster import CLUSTERWIDE, NAMESPACED, OPERATOR_NAMESPACE, RbacMode, rendered_chart
from tests.kubeapi.model import UserInfo
from tests.operator.conftest import AUDIT_FILE_ENV, SUITE_COMPLETE, audit_of_this_run

ROOT = Path(__file__).resolve().parents[2]
Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def operator_rules(mode: RbacMode) -> tuple[set[Grant], set[Grant]]:
    """(namespaced grants, cluster-scope grants) the chart gives the operator in ``mode``."""
    documents = rendered_chart(mode.helm_sets)
    (account,) = [d for d in documents if d["kind"] == "ServiceAccount"]
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": OPERATOR_NAMESPACE}
    bound = {
        (binding["roleRef"]["kind"], binding["roleRef"]["name"], binding["kind"])
        for binding in documents
        if binding["kind"] in ("RoleBinding", "ClusterRoleBinding") and subject in binding.get("subjects", [])
    }
    namespaced: set[Grant] = set()
    cluster: set[Grant] = set()
    for role in documents:
        for kind, name, binding_kind in bound:
            if role["kind"] != kind or role["metadata"]["name"] != name:
                continue
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], f"wildcard in {rule}"
                grants = {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
                namespaced |= grants
                if binding_kind == "ClusterRoleBinding":
                    cluster |= grants
    return namespaced, cluster


def audit_of_the_whole_suite(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Audit]:
    if request.config.stash.get(SUITE_COMPLETE, False):
        return audit_of_this_run(request.config)
    target = tmp_path / "audit.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/operator",
            "-q",
            "-p",
            "no:cacheprovider",
            "--deselect",
            f"{Path(__file__).relative_to(ROOT)}",
        ],
        cwd=ROOT,
        env={**os.environ, AUDIT_FILE_ENV: str(target)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"the operator suite failed:\n{result.stdout[-3000:]}"
    return {mode: Audit.from_json(data) for mode, data in json.loads(target.read_text()).items()}


@pytest.mark.timeout(1800)  # it may wait for another worker's operator tests, or run the suite itself
@pytest.mark.parametrize("mode", [CLUSTERWIDE, NAMESPACED], ids=lambda m: m.name)
def test_the_chart_grants_exactly_what_the_operator_uses(
    mode: RbacMode, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    audits = audit_of_the_whole_suite(request, tmp_path)
    assert mode.name in audits, f"no operator test ran in the {mode.name} mode"
    audit = audits[mode.name]
    documents = rendered_chart(mode.helm_sets)
    (account,) = [d for d in documents if d["kind"] == "ServiceAccount"]
    operator = UserInfo.service_account(OPERATOR_NAMESPACE, account["metadata"]["name"]).name
    uses = audit.of(operator)
    assert len(uses) > 10, "the audit saw the operator at work"

    # Escalation prevention first asks whether the creator of a Role may `escalate`/`bind`, then whether
    # it holds every permission in it; refusing that first question is the expected outcome, not a gap.
    refused = sorted(
        (u.api_group, u.resource, u.verb, "namespaced" if u.namespaced else "cluster")
        for u in uses
        if not u.allowed and u.verb not in ("escalate", "bind")
    )
    assert not refused, f"the operator was refused (the chart lacks these grants): {refused}"
    resource_uses = {u for u in uses if u.allowed and not u.resource.startswith("/")}
    used_namespaced = {(u.api_group, u.resource, u.verb) for u in resource_uses if u.namespaced}
    used_cluster = {(u.api_group, u.resource, u.verb) for u in resource_uses if not u.namespaced}
    granted_namespaced, granted_cluster = operator_rules(mode)
    if mode.namespaces:  # a Role per watched namespace, cluster-scope reads from a ClusterRole
        assert granted_namespaced - granted_cluster - used_namespaced == set(), "granted in namespaces, never used"
        assert granted_cluster - used_cluster == set(), "granted cluster-wide, never used cluster-wide"
    else:
        assert granted_cluster - (used_namespaced | used_cluster) == set(), "granted, never used"
    assert used_cluster <= granted_cluster, "cluster-scope requests need a ClusterRoleBinding"
    assert used_namespaced | used_cluster <= granted_namespaced | granted_cluster
    dropped = [text for text in audit.warnings.get(operator, []) if text.startswith("unknown field")]
    assert not dropped, f"the server dropped fields the operator sent: {dropped}"
