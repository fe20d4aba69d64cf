"""Keys of a job's Secrets as the operator mounts them: one file per key (S3 credentials, an MLflow
login). Files rather than environment variables, so a key never shows in the pod's spec or a dump of
its environment."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.errors import ConfigurationError


def read_secret_key(folder: Path, file: str, *, field: str, secret: str, key: str) -> str:
    """The value of one mounted key, stripped; a key the Secret lacks (the volume is optional, so its
    file is absent), cannot be read or is empty is a ConfigurationError named at ``field``, the spec
    field that lists the key."""
    try:
        value = (folder / file).read_text().strip()
    except FileNotFoundError:
        raise ConfigurationError(f"{field}: Secret '{secret}' has no key '{key}'") from None
    except OSError as err:
        raise ConfigurationError(f"{field}: cannot read key '{key}' of Secret '{secret}': {err.strerror}") from err
    if not value:
        raise ConfigurationError(f"{field}: key '{key}' of Secret '{secret}' is empty")
    return value
