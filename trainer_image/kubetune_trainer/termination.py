"""The one line a kubetune pod leaves for the operator: its termination message."""

from __future__ import annotations

import logging
from pathlib import Path

from kubetune.api.contract import TERMINATION_MESSAGE_LIMIT

log = logging.getLogger(__name__)


def write_termination_message(message: str, path: Path | None) -> None:
    """Write the first line of ``message`` where the operator asked (``$KUBETUNE_TERMINATION_LOG``).

    Kubernetes shows it as the container's termination message. Best effort: without the
    variable (``kubetune run``) or its folder nothing is written, and a failing write is only logged.
    """
    line = message.strip().split("\n", 1)[0]
    if path is None or not line or not path.parent.is_dir():
        return
    bounded = line.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore")  # the kubelet keeps no more
    try:
        path.write_text(bounded)
    except OSError as err:
        log.warning("could not write the termination message to %s: %s", path, err)
