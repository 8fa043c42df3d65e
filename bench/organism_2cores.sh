#!/usr/bin/env bash
# The powered organism experiment (bench/organism.py) on a 2-core machine: two 1-thread processes
# that split the seeds and phases, then a last invocation that pools everything into
# bench/results/organism.{md,json}. The wall time of the whole goes to WORK/wall.json.
#
#   bash bench/organism_2cores.sh [WORK]        # default WORK: runs/organism-bench
#   bash bench/organism_2cores.sh WORK 5 6      # then: more seeds' arms, one 1-thread process each,
#                                               # pooled with seeds 1-4 into organism_6seeds.{md,json}
#
# Process A: seed 1 (arms, rollout localizer), seed 4 (arms), the curve's Step-DPO points and DPO's
#            budgets, the rounds.
# Process B: seeds 2 and 3 (arms, rollout localizer), the curve's DPO point on all seeds' pairs.
# The curve needs seeds 1-3's pairs, so each process waits for the other's before it (seed 4 fills
# A's wait). Everything resumes: rerunning the script continues a killed run.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/organism-bench}
mkdir -p "$WORK"
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}

MAIN_SEEDS=(1 2 3 4)  # the processes below split these
# One setting for every method, chosen on the validation split (bench/results/organism_tune_kv1_middle.md).
SETTING="lr=3e-5 beta=0.4 epochs=2 batch=32"
experiment() {
  "$PY" bench/organism.py --work "$WORK" --problems 1300 --test-n 1000 --transfer-n 300 --rollout-limit 600 \
    --rounds 3 --stop-mismatch drop \
    --setting "step-dpo $SETTING" --setting "dpo $SETTING" --setting "scdpo $SETTING" --setting "judge-free $SETTING" "$@"
}
wait_for_pairs() { while [ ! -f "$WORK/seed$1/pairs/dpo_matched.jsonl" ]; do sleep 10; done; }

if [ $# -gt 1 ]; then
  shift
  started=$(date +%s)
  pids=()
  for seed in "$@"; do
    experiment --seeds "$seed" --phases arms --rollout-seeds 0 > "$WORK/process-seed$seed.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "seeds $* took $(( $(date +%s) - started )) s" | tee "$WORK/more-seeds-wall.txt"
  experiment --seeds "${MAIN_SEEDS[@]}" "$@" --phases analysis --name "organism_$(( ${#MAIN_SEEDS[@]} + $# ))seeds"
  exit 0
fi

started=$(date +%s)
(
  experiment --seeds 1 --phases arms rollout
  experiment --seeds 4 --phases arms --rollout-seeds 0
  wait_for_pairs 2; wait_for_pairs 3
  experiment --seeds 1 2 3 --phases curve --union-methods step-dpo
  experiment --seeds 1 --phases rounds
) > "$WORK/process-a.log" 2>&1 &
a=$!
(
  experiment --seeds 2 3 --phases arms rollout --rollout-seeds 2
  wait_for_pairs 1
  experiment --seeds 1 2 3 --phases curve --union-methods dpo --budgets
) > "$WORK/process-b.log" 2>&1 &
b=$!
failed=0
wait $a || failed=1
wait $b || failed=1
if [ $failed = 1 ]; then echo "a process failed: see $WORK/process-a.log and process-b.log" >&2; exit 1; fi
ended=$(date +%s)
# Read by the analysis, which puts it in the result file.
printf '{"wall_s": %d, "started": "%s", "ended": "%s", "load_average_end": "%s", "cores": %d, "processes": 2, "seeds": [%s]}\n' \
  $((ended - started)) "$(date -d @"$started" -Is)" "$(date -d @"$ended" -Is)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc --all)" "$(IFS=,; echo "${MAIN_SEEDS[*]}")" > "$WORK/wall.json"
experiment --seeds "${MAIN_SEEDS[@]}" --phases analysis
