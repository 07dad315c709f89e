#!/bin/bash
#SBATCH --job-name=train
#SBATCH --account=def-alice
#SBATCH --output=/scratch/alice/milex/slurm/train_20240102030405_train-%j.out
#SBATCH --error=/scratch/alice/milex/slurm/train_20240102030405_train-%j.err
#SBATCH --time=00-01:00

export MILEX=/scratch/alice/milex
source /home/alice/venvs/ml/bin/activate
train \
    --lr=0.001 \
    --epochs=10 \
    --data=/data/cifar10
