"""The emulated API server and its cluster fixtures, shared with the operator tests."""

from tests.operator.conftest import cluster, emulator

__all__ = ["cluster", "emulator"]
