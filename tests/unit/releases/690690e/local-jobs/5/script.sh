#!/bin/sh
#SBATCH --array=0-2
echo task $SLURM_ARRAY_TASK_ID
