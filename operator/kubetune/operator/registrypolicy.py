"""The OCI registries FineTuneJobs may push versions to (``spec.output.oci``): the platform lists them
(Helm value ``registry.oci.registries``) as URLs, so the platform, never a job, decides whether a
registry is reached over plain HTTP (an in-cluster registry) or HTTPS. A repository whose registry is
not listed is refused before any pod exists."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

HELM_VALUE = "registry.oci.registries"


@dataclass(frozen=True)
class RegistryPolicy:
    urls: tuple[str, ...]  # "https://ghcr.io", "http://registry.registry.svc:5000", lower-case, no path

    @classmethod
    def parse(cls, entries: list[str]) -> RegistryPolicy:
        """From the operator's environment; ValueError naming the entry if one is not valid."""
        urls = []
        for entry in entries:
            split = urlsplit(entry.strip().lower())
            if (
                split.scheme not in ("http", "https")
                or not split.hostname
                or split.username
                or split.path.strip("/")
                or split.query
                or split.fragment
            ):
                raise ValueError(
                    f"registry {entry!r}: expected https://host[:port] (or http:// for a registry without TLS), "
                    "no path, e.g. https://ghcr.io"
                )
            urls.append(f"{split.scheme}://{split.netloc}")
        return cls(tuple(urls))

    def url_for(self, repository: str) -> str | None:
        """The listed URL of the registry ``repository`` (registry[:port]/path) names, or None."""
        host = repository.split("/", 1)[0].lower()
        return next((url for url in self.urls if url.split("://", 1)[1] == host), None)

    def refusal(self, repository: str) -> str | None:
        if self.url_for(repository) is not None:
            return None
        listed = ", ".join(url.split("://", 1)[1] for url in self.urls) or "none"
        return (
            f"{repository.split('/', 1)[0]} is not a registry this platform pushes to ({listed}); "
            f"the platform lists them in Helm value {HELM_VALUE}"
        )


NO_REGISTRIES = RegistryPolicy(())  # the chart's default: spec.output.oci is refused
