#!/bin/bash
#SBATCH --job-name=train
#SBATCH --account=def-alice
#SBATCH --output=/scratch/alice/milex/slurm/train_20240102030405_train-%j.out
#SBATCH --error=/scratch/alice/milex/slurm/train_20240102030405_train-%j.err

export MILEX=/scratch/alice/milex
source /home/alice/venvs/ml/bin/activate
train \
    '--message=hello world' \
    '--single=it'"'"'s' \
    '--double=say "hi"' \
    '--home=$HOME' \
    '--backticks=`echo pwned`' \
    '--subshell=$(echo pwned)' \
    '--multiline=line one
line two' \
    --dashed=--not-a-flag \
    --empty= \
    '--unicode=héllo ☃' \
    '--glob=*.csv' \
    '--semicolon=a; echo pwned' \
    --verbose \
    --files \
    'a b.txt' \
    'it'"'"'s.txt' \
    '$HOME' \
    --numbers \
    1 \
    2.5 \
    --epochs=10 \
    --offset=-3 \
    --lr=0.001 \
    --tiny=1e-05 \
    '--options={"a": "x y", "b": [1, 2]}'
