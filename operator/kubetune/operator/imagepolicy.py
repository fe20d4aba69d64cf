"""Which trainer images a FineTuneJob may name: the platform team's allow-list, matched on parsed
image references, never on string prefixes.

A reference is parsed the way container runtimes read it (distribution/reference): the registry
host (with its port; ``docker.io`` when the first path component is not a host), the repository
path (``library/`` added for Docker Hub's single names), and a tag or a digest. An allow-list entry
is one of

- ``registry/repository``: every tag and digest of exactly that repository;
- ``registry/path/*``: every repository under that path, at a path boundary;
- ``registry/repository:tag`` or ``registry/repository@sha256:<digest>``: that one image.

So ``ghcr.io/kubetune/trainer`` allows ``ghcr.io/kubetune/trainer:0.2`` but neither
``ghcr.io/kubetune/trainer-evil`` nor ``ghcr.io.evil.example/kubetune/trainer``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubetune.api.v1alpha1 import IMAGE_PATTERN

DOCKER_HUB = "docker.io"
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageReference:
    registry: str  # lower-case host[:port]
    repository: str  # path without registry, tag or digest
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        if not re.match(IMAGE_PATTERN, text):
            raise ValueError(f"{text!r} is not an image reference")
        rest, _, digest = text.partition("@")
        name, tag = rest, None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:  # a colon after the last slash is a tag; before it, a registry port
            name, tag = rest.rsplit(":", 1)
        first, _, path = name.partition("/")
        if path and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, repository = first.lower(), path
        else:
            registry, repository = DOCKER_HUB, name
        if registry in (DOCKER_HUB, "index.docker.io", "registry-1.docker.io"):
            registry = DOCKER_HUB
            if "/" not in repository:
                repository = f"library/{repository}"
        return cls(registry, repository, tag, digest or None)

    def __str__(self) -> str:
        return _written(self.registry, self.repository, self.tag, self.digest)


def _written(registry: str, repository: str, tag: str | None, digest: str | None) -> str:
    return f"{registry}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


@dataclass(frozen=True)
class AllowedImage:
    """One entry of the allow-list (see the module's docstring for the forms)."""

    registry: str
    repository: str
    under: bool = False  # ``path/*``: repositories below ``repository``
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedImage:
        entry = text.strip()
        if entry.endswith("/*"):
            reference = ImageReference.parse(entry[:-2])
            if reference.tag or reference.digest:
                raise ValueError(f"{text!r}: a '/*' entry names a path, without a tag or digest")
            return cls(reference.registry, reference.repository, under=True)
        reference = ImageReference.parse(entry)
        if reference.digest and not _DIGEST.match(reference.digest):
            raise ValueError(f"{text!r}: a digest is sha256:<64 hex digits>")
        return cls(reference.registry, reference.repository, tag=reference.tag, digest=reference.digest)

    def allows(self, image: ImageReference) -> bool:
        if image.registry != self.registry:
            return False
        if self.under:
            return image.repository.startswith(self.repository + "/")
        if image.repository != self.repository:
            return False
        if self.digest:
            return image.digest == self.digest
        if self.tag:
            return image.tag == self.tag and image.digest is None
        return True

    def __str__(self) -> str:
        if self.under:
            return f"{self.registry}/{self.repository}/*"
        return _written(self.registry, self.repository, self.tag, self.digest)


@dataclass(frozen=True)
class ImagePolicy:
    allowed: tuple[AllowedImage, ...]
    # The release profile (Helm value release.requireDigests): a tag can be moved to another build,
    # a digest cannot, so only references with a digest run.
    require_digest: bool = False

    @classmethod
    def parse(cls, entries: list[str], *, require_digest: bool = False) -> ImagePolicy:
        return cls(tuple(AllowedImage.parse(entry) for entry in entries if entry.strip()), require_digest)

    def digest_refusal(self, image: str) -> str | None:
        """Why the release profile refuses ``image``, or None."""
        try:
            reference = ImageReference.parse(image)
        except ValueError as err:
            return str(err)
        if self.require_digest and reference.digest is None:
            return f"{reference} names no digest; the release profile (Helm value release.requireDigests) runs images by digest only"
        return None

    def refusal(self, image: str) -> str | None:
        """Why ``image`` may not run, or None when the allow-list admits it."""
        try:
            reference = ImageReference.parse(image)
        except ValueError as err:
            return str(err)
        if (why := self.digest_refusal(image)) is not None:
            return why
        if any(entry.allows(reference) for entry in self.allowed):
            return None
        listed = ", ".join(str(entry) for entry in self.allowed)
        return f"{reference} is not in the platform's allowed images ({listed}; Helm value policy.allowedImages)"
