"""Benchmarks of Milex against the ways people submit to SLURM today (`python -m bench`, see README)."""
