#!/bin/bash
#SBATCH --job-name=train
#SBATCH --output=/home/alice/milex/slurm/train_20240102030405_train-%j.out
#SBATCH --error=/home/alice/milex/slurm/train_20240102030405_train-%j.err
#SBATCH --time=00-01:00

export MILEX=/home/alice/milex
train \
    --lr=0.001 \
    --epochs=10 \
    --data=/data/cifar10
