"""Lablink's UserLab Manager: lab pods on Kubernetes for cloud systems."""
