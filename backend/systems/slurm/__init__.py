"""Kind ``slurm``: labs as Slurm batch jobs submitted through slurmrestd."""
