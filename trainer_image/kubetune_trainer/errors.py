"""Errors the trainer turns into exit codes (the codes: ``kubetune.api.contract``)."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A problem with the job's inputs that a retry cannot fix (``EXIT_CONFIG``)."""


class CannotReport(RuntimeError):
    """The FineTuneJob status cannot be written at all, so the trainer stops before any work
    (``EXIT_CANNOT_REPORT``). The message quotes the API's answer, e.g. ``HTTP 403 Forbidden: ...``."""


class ResultNotReported(RuntimeError):
    """The final result could not be written to the FineTuneJob status (``EXIT_RESULT_NOT_REPORTED``).

    The message is the last error; the artifacts are already published and stay in storage.
    """
