"""The Slurm backend: attempts as Slurm batch jobs (executor.py), Slurm's commands (commands.py)."""
