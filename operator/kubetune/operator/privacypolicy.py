"""The platform's floor on personal data: the weakest ``pii`` policy a tenant's FineTuneJob may choose.

A tenant writing ``dataset.curation.pii: off`` (or a source's ``pii: report``) trains on e-mail
addresses and card numbers as they are, and the model can repeat them to anyone who uses it. Whether
that is acceptable is the platform's decision, not the tenant's: the Helm value
``policy.minPersonalDataProtection`` names the weakest policy allowed, and a job choosing a weaker
one, for every source or for one, is refused before any pod runs, at the field that chose it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.v1alpha1 import FineTuneJobSpec, PersonalDataPolicy

HELM_VALUE = "policy.minPersonalDataProtection"
# Weakest first. `drop` ranks above `redact`: a redacted row still trains on its context (who wrote
# about what), a dropped one on nothing.
PROTECTION_ORDER = (
    PersonalDataPolicy.OFF,
    PersonalDataPolicy.REPORT,
    PersonalDataPolicy.REDACT,
    PersonalDataPolicy.DROP,
)
DEFAULT_MIN_PROTECTION = PersonalDataPolicy.REDACT  # the API's own default: a job that says nothing passes


@dataclass(frozen=True)
class PersonalDataFloor:
    weakest: PersonalDataPolicy

    @classmethod
    def parse(cls, raw: str) -> PersonalDataFloor:
        """From the operator's environment ("" for the default); ValueError naming the choices otherwise."""
        value = raw.strip() or DEFAULT_MIN_PROTECTION.value
        try:
            return cls(PersonalDataPolicy(value))
        except ValueError:
            choices = ", ".join(policy.value for policy in PROTECTION_ORDER)
            raise ValueError(f"{value!r}: expected one of {choices} (weakest first)") from None

    @property
    def allowed(self) -> tuple[PersonalDataPolicy, ...]:
        return PROTECTION_ORDER[PROTECTION_ORDER.index(self.weakest) :]

    def refusal(self, spec: FineTuneJobSpec) -> tuple[str, str] | None:
        """(field, why) for the first source whose effective policy is weaker than the floor, named at the
        field that set it: the source's own ``pii``, or ``dataset.curation.pii`` that it inherits."""
        for index, source in enumerate(spec.dataset.sources):
            if source.pii is not None:
                field, chosen = f"spec.dataset.sources[{index}].pii", source.pii
            else:
                field, chosen = "spec.dataset.curation.pii", spec.dataset.curation.pii
            chosen = PersonalDataPolicy(chosen)  # the API model keeps enum values as strings
            if chosen not in self.allowed:
                allowed = " or ".join(policy.value for policy in self.allowed)
                return field, (
                    f"'{chosen.value}' handles personal data more weakly than the platform allows: choose "
                    f"{allowed} (the platform team sets the floor with the Helm value {HELM_VALUE})"
                )
        return None
