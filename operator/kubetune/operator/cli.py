"""``kubetune-operator``: run the operator (config from ``KUBETUNE_*`` environment variables)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from kubetune.operator.config import OperatorConfig


def main() -> int:
    config = OperatorConfig.from_env()  # fail at startup, not in the first handler
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubetune.operator import main as handlers  # noqa: F401  (registers the kopf handlers)

    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces) or None,
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
            standalone=True,  # one replica with the Recreate strategy: no peering needed
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
