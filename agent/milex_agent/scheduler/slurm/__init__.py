"""SLURM behind the `Scheduler` protocol: sbatch/squeue/scancel, the poll, history, limits, output."""
