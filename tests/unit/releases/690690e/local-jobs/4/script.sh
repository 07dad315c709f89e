#!/bin/sh
#SBATCH --job-name=hang
sleep 60
