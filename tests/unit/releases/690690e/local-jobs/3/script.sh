#!/bin/sh
#SBATCH --job-name=slow
sleep 60
