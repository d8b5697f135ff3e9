"""Cloud systems: labs as Kubernetes pods, started by the UserLab Manager."""
