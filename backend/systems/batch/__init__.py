"""The shared base of batch kinds (``unicore``, ``slurm``): settings, catalog, start
script and driver."""
