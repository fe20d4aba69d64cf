"""The FineTuneJob API shared by the operator and the trainer. No Kubernetes or ML imports."""
