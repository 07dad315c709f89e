#!/bin/sh
#SBATCH --job-name=bad
echo failing >&2
exit 3
