"""Read ``hf://`` URIs: repositories of the Hugging Face Hub, or of the platform's mirror of it.

A model is ``hf://owner/name[@revision]``; a dataset, a file or a folder of one,
``hf://datasets/owner/name[@revision][/path]`` (huggingface_hub's own URL form for datasets). Reads go
through huggingface_hub (``HfApi`` for the revision and the file listing, ``snapshot_download`` for a
model's files and a dataset's, into its cache, ``hf_hub_download`` for a single file), pinned to the commit the revision resolved to when first asked, and each file is
checked against the listing's checksum before it is used: an LFS file's SHA-256, another file's git
blob id. The Hub is read only here: nothing is published to it (``spec.output.uri`` takes no hf://).

Of a model repository only what the trainer loads safely is fetched (:data:`MODEL_FILES`):
safetensors weights, JSON configs and tokenizer files, never pickled weights or code.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from kubetune_trainer.environment import TrainerEnvironment

SCHEME = "hf://"
DATASETS = "datasets"  # the first segment that makes an hf:// URI a dataset's
# What is fetched of a model repository: the weights as safetensors, configs, tokenizers, chat templates.
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model", "*.txt", "*.jinja")
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_COMMIT_LENGTH = 40

T = TypeVar("T")


class HubError(RuntimeError):
    """A repository, revision or file could not be read; the message names the URI and the cause.
    (``kubetune_trainer.storage`` raises it as its own StorageError.)"""


@dataclass(frozen=True)
class HubRepo:
    kind: Literal["model", "dataset"]
    repo_id: str  # owner/name
    revision: str | None  # as written; a commit once pinned

    @property
    def ref(self) -> str:
        """The URI's authority and repository part: ``datasets/owner/name@rev`` or ``owner/name@rev``."""
        prefix = f"{DATASETS}/" if self.kind == "dataset" else ""
        return f"{prefix}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    def uri(self, path: str = "") -> str:
        return f"{SCHEME}{self.ref}" + (f"/{path}" if path else "")

    @property
    def pinned(self) -> bool:
        revision = self.revision or ""
        return len(revision) == _COMMIT_LENGTH and all(c in "0123456789abcdef" for c in revision)


def parse_hub_uri(uri: str) -> tuple[HubRepo, str]:
    """The repository an ``hf://`` URI names and the path inside it ('' for the whole repository)."""
    if not uri.startswith(SCHEME):
        raise HubError(f"{uri}: not an hf:// URI")
    parts = uri[len(SCHEME) :].split("/")
    kind: Literal["model", "dataset"] = "dataset" if parts[0] == DATASETS else "model"
    parts = parts[1:] if kind == "dataset" else parts
    if len(parts) < 2 or not parts[0] or not parts[1]:
        form = "hf://datasets/owner/name[@revision][/path]" if kind == "dataset" else "hf://owner/name[@revision]"
        raise HubError(f"{uri}: expected {form}")
    owner, (name, _, revision) = parts[0], parts[1].partition("@")
    path = "/".join(parts[2:]).strip("/")  # a model's URI has none (the API's pattern), its files do
    return HubRepo(kind, f"{owner}/{name}", revision or None), path


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    blob_id: str  # git's blob id (SHA-1 of "blob <size>\0" + content)
    sha256: str | None  # an LFS file's SHA-256 (the Hub stores weights this way)

    def check(self, local: Path) -> str | None:
        """Why ``local`` is not this file (size or checksum), or None."""
        size = local.stat().st_size
        if size != self.size:
            return f"{size} bytes where the Hub lists {self.size}"
        digest = hashlib.sha256() if self.sha256 else hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
        with local.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        expected = self.sha256 or self.blob_id
        if digest.hexdigest() != expected:
            kind = "SHA-256" if self.sha256 else "git blob id"
            return f"its {kind} is {digest.hexdigest()} where the Hub lists {expected}"
        return None


@dataclass
class HubClient:
    """huggingface_hub against one endpoint with one token; remembers each revision's commit and listing
    for the run, so every file of a run comes from the same commit."""

    # The platform's (HF_ENDPOINT as TrainerEnvironment read it: huggingface_hub reads it only at import);
    # None: https://huggingface.co
    endpoint: str | None = None
    # spec.hub.tokenSecret as the operator mounts it, read at the first request (a problem with it is the
    # run's clear error, not its start's); None: the user's own login, if any (HF_TOKEN, `hf auth login`)
    token_file: Path | None = None
    cache_dir: Path | None = None  # None: huggingface_hub's (HF_HOME)
    token_field: str = "spec.hub.tokenSecret"  # where a user gives a token, for the messages
    _commits: dict[HubRepo, str] = field(default_factory=dict)
    _listings: dict[HubRepo, dict[str, HubFile]] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environment: TrainerEnvironment) -> HubClient:
        """The client of a run or a command in a pod: the platform's endpoint, the mounted token."""
        return cls(environment.hub_endpoint, token_file=environment.hub_token_file)

    @property
    def token(self) -> str | None:
        if self.token_file is None:
            return None
        from kubetune_trainer.secrets import read_mounted_key

        return read_mounted_key(self.token_file, field=f"{self.token_field}.key", what="the token")

    def pin(self, repo: HubRepo) -> HubRepo:
        """``repo`` at the commit its revision names now (asked once per revision and run)."""
        if repo.pinned:
            return repo
        if repo not in self._commits:
            info = self._call(
                repo.uri(), lambda api: api.repo_info(repo.repo_id, repo_type=repo.kind, revision=repo.revision)
            )
            if not info.sha:
                raise HubError(f"{repo.uri()}: the Hub answered without the revision's commit")
            self._commits[repo] = str(info.sha)
        return replace(repo, revision=self._commits[repo])

    def listing(self, repo: HubRepo) -> dict[str, HubFile]:
        """Every file of the repository at its pinned commit, by path."""
        repo = self.pin(repo)
        if repo not in self._listings:

            def tree(api: Any) -> dict[str, HubFile]:
                from huggingface_hub.hf_api import RepoFile

                entries = api.list_repo_tree(repo.repo_id, repo_type=repo.kind, revision=repo.revision, recursive=True)
                return {
                    item.path: HubFile(item.path, item.size, item.blob_id, item.lfs.sha256 if item.lfs else None)
                    for item in entries
                    if isinstance(item, RepoFile)
                }

            self._listings[repo] = self._call(repo.uri(), tree)
        return self._listings[repo]

    def files_under(self, uri: str) -> list[str]:
        """The pinned URIs of the files at or under ``uri``'s path, sorted."""
        repo, path = parse_hub_uri(uri)
        repo = self.pin(repo)
        found = self.listing(repo)
        if path in found:
            return [repo.uri(path)]
        prefix = f"{path}/" if path else ""
        return sorted(repo.uri(name) for name in found if name.startswith(prefix))

    def snapshot(self, uri: str, names: list[str]) -> None:
        """``names`` of the repository into the cache at once, by huggingface_hub's ``snapshot_download``
        (parallel, resumable); :meth:`fetch` then checks each and finds it there without a request."""
        repo, _ = parse_hub_uri(uri)
        repo = self.pin(repo)
        if not names:
            return

        def download(api: Any) -> None:
            from huggingface_hub import snapshot_download

            snapshot_download(
                repo.repo_id,
                repo_type=repo.kind,
                revision=repo.revision,
                allow_patterns=names,
                endpoint=api.endpoint,
                token=self.token,
                cache_dir=self.cache_dir,
            )

        self._call(repo.uri(), download)

    def fetch(self, uri: str) -> Path:
        """One file, downloaded into the cache (once) and checked against the listing."""
        repo, path = parse_hub_uri(uri)
        repo = self.pin(repo)
        listed = self.listing(repo).get(path)
        if listed is None:
            raise HubError(f"{uri}: no such file in {repo.uri()}")

        def download(api: Any) -> str:
            from huggingface_hub import hf_hub_download

            return str(
                hf_hub_download(
                    repo.repo_id,
                    path,
                    repo_type=repo.kind,
                    revision=repo.revision,
                    endpoint=api.endpoint,
                    token=self.token,
                    cache_dir=self.cache_dir,
                )
            )

        local = Path(self._call(uri, download))
        if (problem := listed.check(local)) is not None:
            local.resolve().unlink(missing_ok=True)  # never served from the cache again
            raise HubError(f"{uri}: the downloaded file is not the one listed: {problem}")
        return local

    def download_model(self, uri: str, dest: Path) -> HubRepo:
        """The safe files of a model repository (:data:`MODEL_FILES`) as links in ``dest``; the pinned
        repository. Refused, naming them, when its weights are only pickled."""
        repo, _ = parse_hub_uri(uri)
        repo = self.pin(repo)
        names = sorted(self.listing(repo))
        # Top-level files only: what from_pretrained reads (a subfolder holds other formats' copies).
        wanted = [name for name in names if "/" not in name and _matches(name, MODEL_FILES)]
        if not any(name.endswith(".safetensors") for name in wanted):
            pickled = [name for name in names if _matches(name, PICKLED_WEIGHTS)]
            hint = f" (found {', '.join(pickled)}: pickled weights are refused)" if pickled else ""
            raise HubError(f"{repo.uri()}: no *.safetensors weights{hint}")
        self.snapshot(repo.uri(), wanted)
        dest.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            local = self.fetch(repo.uri(name))
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.symlink_to(local.resolve())
        return repo

    def _call(self, uri: str, action: Callable[[Any], T]) -> T:
        """``action(HfApi)``, its failures said in the user's terms (never a traceback)."""
        import httpx2  # huggingface_hub's HTTP client
        from huggingface_hub import HfApi
        from huggingface_hub import errors as hub_errors

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            return action(api)
        except hub_errors.GatedRepoError as err:
            raise HubError(
                f"{uri}: the repository is gated: accept its terms on the Hub and give a token with access in "
                f"{self.token_field} ({_status(err)})"
            ) from err
        except hub_errors.RepositoryNotFoundError as err:
            raise HubError(
                f"{uri}: repository not found, or private and not readable with the token given "
                f"({self.token_field}) ({_status(err)})"
            ) from err
        except hub_errors.RevisionNotFoundError as err:
            raise HubError(f"{uri}: no such revision ({_status(err)})") from err
        except (hub_errors.RemoteEntryNotFoundError, hub_errors.EntryNotFoundError) as err:
            raise HubError(f"{uri}: no such file ({_status(err)})") from err
        except hub_errors.OfflineModeIsEnabled as err:
            raise HubError(
                f"{uri}: huggingface_hub is offline (HF_HUB_OFFLINE=1): unset it to read hf:// URIs"
            ) from err
        except (OSError, ValueError, httpx2.HTTPError) as err:  # refused, unreachable, a bad answer
            response = getattr(err, "response", None)
            if response is not None and response.status_code == 401 and self.token_file is not None:
                raise HubError(f"{uri}: the Hub at {api.endpoint} refused the token in {self.token_field}") from err
            raise HubError(f"{uri}: cannot read from the Hub at {api.endpoint}: {_status(err)}") from err


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], pattern) for pattern in patterns)


def _status(err: BaseException) -> str:
    """The first line of huggingface_hub's message (the rest is advice for its own users)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
