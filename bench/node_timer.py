"""Raw sbatch timed on the login node itself (the floor), run there as the benchmark user.

Its source is passed to `python3 -c`, so it imports nothing but the standard library. It reads one
JSON request per line on stdin and answers one JSON line: {"op": "one"} submits a job;
{"op": "loop", "count": N, "chain": bool} submits N, each after the previous one if `chain`;
{"op": "squeue", "job_id": ID, "count": N} times N single-job squeue calls.
"""

import json
import subprocess
import sys
import time

SBATCH = ["sbatch", "--parsable", "--hold", "--job-name=bench-raw", "--output=/dev/null", "--wrap=true"]


def submit(after: str = "") -> str:
    argv = SBATCH + ([f"--dependency=afterok:{after}"] if after else [])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def answer(request: dict) -> dict:
    start = time.perf_counter()
    if request["op"] == "one":
        job_id = submit()
        return {"seconds": time.perf_counter() - start, "job_ids": [job_id]}
    if request["op"] == "loop":
        job_ids: list[str] = []
        for _ in range(request["count"]):
            job_ids.append(submit(job_ids[-1] if request["chain"] and job_ids else ""))
        return {"seconds": time.perf_counter() - start, "job_ids": job_ids}
    samples = []
    for _ in range(request["count"]):
        began = time.perf_counter()
        subprocess.run(["squeue", "-h", "-j", request["job_id"]], capture_output=True, check=False)
        samples.append(time.perf_counter() - began)
    return {"samples": samples}


for line in sys.stdin:
    print(json.dumps(answer(json.loads(line))), flush=True)
