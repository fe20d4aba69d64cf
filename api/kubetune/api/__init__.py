"""The FineTuneJob API shared by the operator and the trainer. No Kubernetes or ML imports."""

from importlib.metadata import version

# Written once, in pyproject.toml; both planes are installed from it (editable in development).
__version__ = version("kubetune")
