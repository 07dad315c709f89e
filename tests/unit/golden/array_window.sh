#!/bin/bash
#SBATCH --job-name=sweep
#SBATCH --account=def-alice
#SBATCH --output=/scratch/alice/milex/slurm/train_20240102030405_train-%A_%a.out
#SBATCH --error=/scratch/alice/milex/slurm/train_20240102030405_train-%A_%a.err
#SBATCH --time=30
#SBATCH --array=1-995:7%10

# One window of a larger array: SLURM runs its indices shifted down by 1000.
export MILEX_ARRAY_OFFSET=1000
export SLURM_ARRAY_TASK_ID=$((${SLURM_ARRAY_TASK_ID:?this script runs as a SLURM array task} + 1000))
export SLURM_ARRAY_TASK_MIN=$((${SLURM_ARRAY_TASK_MIN:?this script runs as a SLURM array task} + 1000))
export SLURM_ARRAY_TASK_MAX=$((${SLURM_ARRAY_TASK_MAX:?this script runs as a SLURM array task} + 1000))
export MILEX=/scratch/alice/milex
source /home/alice/venvs/ml/bin/activate
export PRE=ran
sweep \
    --grid=small
