#!/usr/bin/env bash
# Lottery-ticket pruning as a pipeline step: submit a spec, wait for the job, fail the step when
# the winning ticket lost too much accuracy against the dense network, else download the ticket.
#
#   export LTH_URL=http://lth.internal:8000 LTH_API_KEY=lth_...   # never put the key in argv
#   examples/pipeline.sh examples/lenet_fashion_mnist.yaml 1.0 artifacts/ticket
#
# Arguments: SPEC (JSON or YAML), MAX_DROP in accuracy points (default 1.0), DEST (default ./ticket).
# Exit status: lth's when the job did not succeed (1 failed, 3 cancelled; see `lth --help`),
# 10 when the ticket's accuracy drop exceeds MAX_DROP, 0 when the ticket is downloaded.
set -euo pipefail

spec=${1:?usage: pipeline.sh SPEC [MAX_DROP_POINTS] [DEST]}
max_drop=${2:-1.0}
dest=${3:-ticket}

# --wait blocks until the job is final and exits non-zero unless it succeeded; --json prints it.
job_json=$(lth submit "$spec" --wait --json) || exit $?

# Read the result with the Python every lth installation has (no jq needed).
job_id=$(JOB_JSON=$job_json python3 -c 'import json, os; print(json.loads(os.environ["JOB_JSON"])["id"])')
JOB_JSON=$job_json python3 - "$max_drop" <<'PY' || exit 10
import json, os, sys

job = json.loads(os.environ["JOB_JSON"])
result, max_drop = job["result"], float(sys.argv[1])
drop = 100 * (result["dense_accuracy"] - result["ticket_accuracy"])
print(
    f"{job['id']}: ticket keeps {100 * result['ticket_density']:.2f}% of the weights at "
    f"{100 * result['ticket_accuracy']:.2f}% accuracy ({drop:+.2f} points below dense)"
)
if drop > max_drop:
    sys.exit(f"accuracy drop {drop:.2f} points exceeds the allowed {max_drop:.2f}")
PY

lth jobs download "$job_id" "$dest"
echo "ticket of $job_id in $dest; report: ${LTH_URL:-http://127.0.0.1:8000}/v1/jobs/$job_id/report"
