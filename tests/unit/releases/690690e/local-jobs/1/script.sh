#!/bin/sh
#SBATCH --job-name=ok
echo ok
