"""`python -m bench`: run every benchmark section and write bench/results/."""

from bench.run import main

main()
