"""kubetune: a Kubernetes-native operator for fine-tuning LLMs (control plane + shared API)."""

__version__ = "0.1.0"
