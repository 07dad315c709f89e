#!/bin/bash
#SBATCH --job-name=sweep
#SBATCH --account=def-alice
#SBATCH --output=/scratch/alice/milex/slurm/train_20240102030405_train-%A_%a.out
#SBATCH --error=/scratch/alice/milex/slurm/train_20240102030405_train-%A_%a.err
#SBATCH --time=30
#SBATCH --array=1-10:2

export MILEX=/scratch/alice/milex
source /home/alice/venvs/ml/bin/activate
sweep \
    --grid=small
