#!/bin/sh
#SBATCH --job-name=after
echo never
