"""The resources the test API server serves: the built-in kinds kubetune's components touch, and
every CustomResourceDefinition created through the API (as kube-apiserver's apiextensions server
does, so a CRD is installed the way ``helm install`` installs it, and validated by its own schema).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.kubeapi.model import ResourceType

STATUS = frozenset({"status"})

# Built-in kinds. Every kind a kubetune component or a test plays with is listed, and is served
# with the same enforcement (authentication, RBAC, validation) as any other.
BUILTIN: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, STATUS | {"finalize"}, "namespace", ("ns",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, frozenset(), "configmap", ("cm",)),
    ResourceType("", "v1", "secrets", "Secret", True, frozenset(), "secret"),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, frozenset({"token"}), "serviceaccount", ("sa",)),
    ResourceType(
        "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, STATUS, "persistentvolumeclaim", ("pvc",)
    ),
    ResourceType("", "v1", "pods", "Pod", True, STATUS | {"log"}, "pod", ("po",)),
    ResourceType("", "v1", "services", "Service", True, STATUS, "service", ("svc",)),
    ResourceType("", "v1", "events", "Event", True, frozenset(), "event", ("ev",)),
    ResourceType("batch", "v1", "jobs", "Job", True, STATUS, "job"),
    ResourceType(
        "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, frozenset(), "networkpolicy", ("netpol",)
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True, frozenset(), "role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, frozenset(), "rolebinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, frozenset(), "clusterrole"),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        False,
        frozenset(),
        "clusterrolebinding",
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        STATUS,
        "customresourcedefinition",
        ("crd", "crds"),
    ),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
        "ValidatingAdmissionPolicy",
        False,
        STATUS,
        "validatingadmissionpolicy",
    ),
    ResourceType(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
        "ValidatingAdmissionPolicyBinding",
        False,
        frozenset(),
        "validatingadmissionpolicybinding",
    ),
)
RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
ADMISSION_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Namespace"}


def types_of_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CRD serves: one per served version."""
    spec = crd["spec"]
    names = spec["names"]
    found = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = frozenset((version.get("subresources") or {}).keys())
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        found.append(
            ResourceType(
                spec["group"],
                version["name"],
                names["plural"],
                names["kind"],
                spec.get("scope", "Namespaced") == "Namespaced",
                subresources,
                names.get("singular", names["kind"].lower()),
                tuple(names.get("shortNames") or ()),
                schema=schema,
                crd_name=crd["metadata"]["name"],
            )
        )
    return found


class Registry:
    def __init__(self) -> None:
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        self._by_kind: dict[tuple[str, str], ResourceType] = {}
        for rtype in BUILTIN:
            self.add(rtype)

    def add(self, rtype: ResourceType) -> None:
        self._by_path[(rtype.group, rtype.version, rtype.plural)] = rtype
        self._by_kind[(rtype.group, rtype.kind)] = rtype

    def remove_crd(self, crd_name: str) -> list[ResourceType]:
        gone = [rtype for rtype in self._by_path.values() if rtype.crd_name == crd_name]
        for rtype in gone:
            self._by_path.pop((rtype.group, rtype.version, rtype.plural), None)
            self._by_kind.pop((rtype.group, rtype.kind), None)
        return gone

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        return self._by_kind.get((group, kind))

    def by_group_resource(self, group: str, plural: str) -> ResourceType | None:
        return next((t for t in self._by_path.values() if t.group == group and t.plural == plural), None)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._by_path.values()))

    # ------------------------------------------------------------------ discovery documents
    def group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rtype in self:
            if rtype.group and rtype.version not in groups.setdefault(rtype.group, []):
                groups[rtype.group].append(rtype.version)
        return groups

    def api_group(self, group: str, versions: list[str]) -> dict[str, Any]:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        types = [t for t in self if t.group == group and t.version == version]
        if not types:
            return None
        resources: list[dict[str, Any]] = []
        for rtype in sorted(types, key=lambda t: t.plural):
            resources.append(
                {
                    "name": rtype.plural,
                    "singularName": rtype.singular,
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    **({"shortNames": list(rtype.short_names)} if rtype.short_names else {}),
                }
            )
            for sub in sorted(rtype.subresources):
                verbs = ["get", "patch", "update"] if sub != "token" else ["create"]
                resources.append(
                    {
                        "name": f"{rtype.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": rtype.kind if sub != "token" else "TokenRequest",
                        "verbs": verbs,
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }
