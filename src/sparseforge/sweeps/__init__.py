"""Sweeps: deterministic sweep points, the sbatch-array planner, SLURM pre-flight, aggregation.

Import-light (no torch): the point-identity resolver runs on every ``python train.py``.
"""
