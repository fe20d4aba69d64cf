"""Exit codes of the trainer: the contract with the operator's pod failure policy.

The training Job's ``podFailurePolicy`` fails the Job at once on ``EXIT_CONFIG`` (retrying a
bad manifest or dataset cannot help) and retries everything else up to ``backoffLimit``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RETRYABLE = 1  # e.g. S3 unreachable, out of memory: another pod may succeed
EXIT_CONFIG = 2  # bad manifest, bad dataset, failed pre-flight: fail fast
EXIT_PREEMPTED = 143  # SIGTERM: a checkpoint was written, the next pod resumes


class ConfigurationError(ValueError):
    """A problem with the job's inputs that a retry cannot fix (exit code 2)."""
