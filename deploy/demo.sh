#!/usr/bin/env bash
# demo.sh - set up from nothing, then schedule the example app with arguments, append a dependent
# job, run the bundle on the local test cluster and show both jobs finish with their arguments.
# It keeps its own configuration (~/.milex-demo), so an existing ~/.milexconfig is left alone.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$REPO/deploy/setup.sh" --local-only
export PATH="$REPO/.venv/bin:$PATH"

DEMO=${MILEX_DEMO_DIR:-$HOME/.milex-demo}
export MILEX_CONFIG=$DEMO/milexconfig
# The embedded default: the test cluster when SLURM answers, else Milex's local scheduler.
scheduler=local
scontrol ping 2>/dev/null | grep -q 'is UP' && scheduler=slurm
mkdir -p "$DEMO"
cat >"$DEMO/machines.json" <<JSON
{"local": {"path": "$DEMO/milex", "env_command": "source $REPO/.venv/bin/activate",
           "slurm_account": "demo", "scheduler": "$scheduler"}}
JSON

set -x
milex-configuration --from "$DEMO/machines.json"
# shellcheck disable=SC2016  # the $HOME is meant to reach the app literally
milex-schedule milex-example --time 00-00:05 --mem 100M \
    --message 'Hello from Milex: $HOME stays literal, "quotes" too' --values a 'b c'
milex-schedule milex-example --append --job_name summary --dependencies milex-example --count 2
milex-run milex-example --wait --timeout 120
{ set +x; } 2>/dev/null
# shellcheck disable=SC2012  # record names are plain: NAME_DATE.json
newest=$(basename "$(ls -t "$DEMO"/milex/jobs/milex-example_*[0-9].json | head -n 1)" .json)
echo "What each job received (from its SLURM output file):"
cat "$DEMO/milex/slurm/$newest"_*.out
