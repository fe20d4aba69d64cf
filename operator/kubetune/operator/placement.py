"""Where training pods run: placement profiles the platform team defines, picked by name.

Raw scheduling fields in a manifest (``resources.nodeSelector``, ``tolerations``,
``priorityClassName``) would let a tenant tolerate every taint, land on another team's GPU pool or
preempt with a system priority. So by default a FineTuneJob names a profile
(``resources.placement``) from the Helm value ``policy.placementProfiles``, the profile named
``default`` applies when it names none, and the raw fields are refused unless the platform team
sets ``policy.allowRawScheduling``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune.api.manifest import validation_problems
from kubetune.api.rules import broken_rules
from kubetune.api.v1alpha1 import DNS_LABEL_PATTERN, PlacementProfile, ResourcesSpec

DEFAULT_PROFILE = "default"
RAW_FIELDS = (
    ("nodeSelector", "node_selector"),
    ("tolerations", "tolerations"),
    ("priorityClassName", "priority_class_name"),
)


@dataclass(frozen=True)
class PlacementPolicy:
    profiles: Mapping[str, PlacementProfile]
    allow_raw: bool

    @classmethod
    def parse(cls, profiles_json: str, *, allow_raw: bool) -> PlacementPolicy:
        """From the operator's environment; ValueError naming the profile and field if it is not valid."""
        try:
            raw = json.loads(profiles_json or "{}")
        except ValueError as err:
            raise ValueError(f"not JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError("expected an object of profiles by name")
        profiles: dict[str, PlacementProfile] = {}
        for name, body in raw.items():
            if not re.match(DNS_LABEL_PATTERN, name) or len(name) > 63:
                raise ValueError(f"profile {name!r}: a name is a DNS label (what spec.resources.placement admits)")
            try:
                profile = PlacementProfile.model_validate(body or {}, strict=True, by_alias=True, by_name=False)
            except ValidationError as err:
                where, why = validation_problems(err, "", PlacementProfile)[0]
                raise ValueError(f"profile {name!r}: {where.lstrip('.')}: {why}") from err
            # The same checks as a manifest's own fields get (the API server's rules for tolerations).
            if problems := broken_rules(profile, ""):
                where, why = problems[0]
                raise ValueError(f"profile {name!r}: {where.lstrip('.')}: {why}")
            profiles[name] = profile
        return cls(profiles, allow_raw)

    def refusal(self, resources: ResourcesSpec) -> tuple[str, str] | None:
        """(field, why) when the job's placement is not allowed, else None."""
        if not self.allow_raw:
            for alias, attribute in RAW_FIELDS:
                if getattr(resources, attribute):
                    return (
                        f"spec.resources.{alias}",
                        "the platform does not allow raw scheduling fields; pick a placement profile with "
                        f"spec.resources.placement ({self._offered()})",
                    )
        if resources.placement is not None and resources.placement not in self.profiles:
            return "spec.resources.placement", f"no placement profile {resources.placement!r} ({self._offered()})"
        return None

    def scheduling(self, resources: ResourcesSpec) -> dict[str, Any]:
        """The pod's nodeSelector, tolerations and priorityClassName: the profile's, then the job's
        own raw fields where allowed (refusal() has already refused them otherwise)."""
        profile = self.profiles.get(resources.placement or DEFAULT_PROFILE) or PlacementProfile()
        node_selector = {**(profile.node_selector or {}), **(resources.node_selector or {})}
        tolerations = [t.to_manifest() for t in [*(profile.tolerations or []), *(resources.tolerations or [])]]
        priority = resources.priority_class_name or profile.priority_class_name
        pod: dict[str, Any] = {}
        if node_selector:
            pod["nodeSelector"] = node_selector
        if tolerations:
            pod["tolerations"] = tolerations
        if priority:
            pod["priorityClassName"] = priority
        return pod

    def _offered(self) -> str:
        names = ", ".join(sorted(self.profiles))
        return f"the platform offers: {names}" if names else "the platform defines none"
