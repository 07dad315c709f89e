#!/bin/bash
#SBATCH --job-name=resnet50
#SBATCH --account=def-alice
#SBATCH --output=/scratch/alice/milex/slurm/train_20240102030405_train-%A_%a.out
#SBATCH --error=/scratch/alice/milex/slurm/train_20240102030405_train-%A_%a.err
#SBATCH --time=1-12:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --gres=gpu:a100:2
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --array=0-9%2
#SBATCH --constraint=v100
#SBATCH --exclusive
#SBATCH --mail-type=END

export MILEX=/scratch/alice/milex
source /home/alice/venvs/ml/bin/activate
module load cuda/12.2
cp "$MILEX/data/train.h5" "$SLURM_TMPDIR/"
train \
    --lr=0.001
