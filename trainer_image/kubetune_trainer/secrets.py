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
    return _read_stripped(
        folder / file,
        field=field,
        missing=f"Secret '{secret}' has no key '{key}'",
        unreadable=f"cannot read key '{key}' of Secret '{secret}'",
        empty=f"key '{key}' of Secret '{secret}' is empty",
    )


def read_mounted_key(path: Path, *, field: str, what: str) -> str:
    """The value of the one key the operator mounted at ``path`` (a pod knows the file, not the Secret's
    name), stripped; absent, unreadable or empty is a ConfigurationError named at ``field``."""
    return _read_stripped(
        path,
        field=field,
        missing="the Secret has no such key",
        unreadable=f"cannot read {what}",
        empty=f"{what} is empty",
    )


def _read_stripped(path: Path, *, field: str, missing: str, unreadable: str, empty: str) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigurationError(f"{field}: {missing}") from None
    except OSError as err:
        raise ConfigurationError(f"{field}: {unreadable}: {err.strerror}") from err
    if not value:
        raise ConfigurationError(f"{field}: {empty}")
    return value
