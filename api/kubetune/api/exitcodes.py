"""The trainer's exit codes and termination message: its contract with the operator.

The trainer (``kubetune_trainer``) exits with one of these codes; the operator's Jobs
(``kubetune.operator.children``) carry a ``podFailurePolicy`` that fails the Job at once on
:data:`FAIL_JOB_EXIT_CODES` and lets the Job controller retry every other failure up to
``backoffLimit``. Both sides import this module, so the numbers cannot drift apart.

Codes 3 and 4 were free: Python itself exits with 1 (uncaught exception) and 2 (command-line
usage errors, which are bad input too), the shell with 126/127, and signals give 128 + N
(137 SIGKILL/OOMKilled, 143 SIGTERM). Nothing in the trainer's stack exits with 3 or 4.

Before any non-zero exit the trainer writes one line saying why to the file named by
:data:`TERMINATION_LOG_ENV` (the container's ``terminationMessagePath``), so
``kubectl describe pod`` and the operator can show it. The line starts with a reason,
``<Reason>: <detail>``, e.g. ``TrainerCannotReport: HTTP 403 Forbidden: <the API's message>``.
"""

from __future__ import annotations

EXIT_OK = 0
"""Done: published (also when the quality gate is missed: published, not promoted), or pre-flight passed."""

EXIT_RETRYABLE = 1
"""A failure another pod may not repeat (storage unreachable, out of memory, a crash): the Job retries."""

EXIT_CONFIG = 2
"""Bad manifest, bad dataset, failed pre-flight: a retry cannot fix it. FailJob at once."""

EXIT_CANNOT_REPORT = 3
"""The trainer cannot write its FineTuneJob status (credentials refused, API unreachable for the
whole first-write window), so it stopped before doing any work: training that nobody can follow
must not run for hours. A retried pod would have the same ServiceAccount and Role. FailJob at once."""

EXIT_RESULT_NOT_REPORTED = 4
"""The run was trained and published (its artifacts are in storage and stay there) but the final
result could not be written to the FineTuneJob status. Retrying would train again for hours.
FailJob at once; the termination message names the version and manifest URI."""

EXIT_PREEMPTED = 143
"""SIGTERM (node drain, preemption): a checkpoint was written and the next pod resumes from it."""

FAIL_JOB_EXIT_CODES = (EXIT_CONFIG, EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED)
"""The codes the pod failure policy fails the Job on at once (retrying cannot help)."""

REPORTING_FAILURES = (EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED)
"""The codes meaning "could not write the FineTuneJob status": the trainer's termination message
(read from the pod) is then the only place where it could leave the reason."""

TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
"""The environment variable through which the operator tells the trainer where to write its termination message."""

TERMINATION_LOG_PATH = "/dev/termination-log"
"""The trainer container's ``terminationMessagePath`` (the Kubernetes default, set explicitly)."""

TERMINATION_MESSAGE_LIMIT = 4096
"""Bytes of a termination message the kubelet keeps; the trainer writes no more than this."""
