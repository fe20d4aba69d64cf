"""``kubetune-operator``: run the operator (config from ``KUBETUNE_*`` environment variables)."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf

from kubetune.operator.config import ConfigError, OperatorConfig


def main() -> int:
    try:
        config = OperatorConfig.from_env()  # fail at startup, not in the first handler
    except ConfigError as err:
        print(f"kubetune-operator: invalid configuration: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs "Handler ... succeeded" at INFO for every watch event; the handlers only queue, so at a
    # thousand FineTuneJobs that is tens of thousands of lines saying nothing, and a share of the CPU.
    # Its warnings and errors still show; the reconcile logs what it does itself.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from kubetune.operator import main as handlers  # noqa: F401  (registers the kopf handlers)

    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=config.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
            standalone=True,  # one replica with the Recreate strategy: no peering needed
            memo=kopf.Memo(config=config),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
