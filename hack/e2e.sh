#!/usr/bin/env bash
# Runs the e2e suite on several clusters at once (`make test-e2e`):
#   - DIR/e2e: every container but the disruptive ones, PROCS ginkgo processes sharing it;
#   - DIR/e2e-disruptive/pN: the disruptive containers (Label "disruptive": they kill and
#     restart kubenova's processes, change the manager's flags, read cluster-wide totals), on
#     DISRUPTIVE_PROCS processes that each start a cluster of their own
#     (KUBENOVA_E2E_CLUSTER_PER_PROCESS=1), so one such container at a time per cluster.
# The disruptive containers spend most of their time waiting on leases, deadlines and restarts,
# not on the CPU, so running them beside the others instead of after them shortens the run by
# about their length. Each cluster is wholly its own (control plane, manager, agents, libvirtd
# hosts, bridge and subnet, both derived from the work directory).
#
#   hack/e2e.sh GINKGO WORK_DIR PROCS [ginkgo flags...]
#
# The parallel run prints as it goes; the disruptive run's output is kept in
# WORK_DIR/e2e-disruptive/ginkgo.log and printed once it ends. Each run writes report.json in
# its own directory. Fails when either run fails.
#
# Environment:
#   E2E_DISRUPTIVE_PROCS  clusters (and processes) for the disruptive containers (2)
#   E2E_ONE_CLUSTER=1     the whole suite on one cluster instead: the disruptive containers then
#                         run alone at the end, as Serial
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 GINKGO WORK_DIR PROCS [ginkgo flags...]" >&2
  exit 2
fi
ginkgo=$1 work=$2 procs=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
suite=$root/test/e2e/e2e.test
common=(--timeout=35m -v --json-report=report.json "$@")

# Compile once: two ginkgo runs of the package would each build it.
"$ginkgo" build -o "$suite" "$root/test/e2e"

if [ "${E2E_ONE_CLUSTER:-}" = 1 ]; then
  mkdir -p "$work/e2e"
  KUBENOVA_WORK_DIR=$work/e2e "$ginkgo" --procs="$procs" --output-dir="$work/e2e" "${common[@]}" "$suite"
  exit
fi

mkdir -p "$work/e2e" "$work/e2e-disruptive"
log=$work/e2e-disruptive/ginkgo.log
KUBENOVA_E2E_CLUSTER_PER_PROCESS=1 KUBENOVA_WORK_DIR=$work/e2e-disruptive \
  "$ginkgo" --procs="${E2E_DISRUPTIVE_PROCS:-2}" --label-filter=disruptive \
  --output-dir="$work/e2e-disruptive" "${common[@]}" "$suite" >"$log" 2>&1 &
disruptive=$!
# Whatever happens to this script, the background run does not outlive it unseen.
trap 'kill -INT "$disruptive" 2>/dev/null || true' EXIT

status=0
KUBENOVA_WORK_DIR=$work/e2e "$ginkgo" --procs="$procs" --label-filter='!disruptive' \
  --output-dir="$work/e2e" "${common[@]}" "$suite" || status=$?

disruptive_status=0
wait "$disruptive" || disruptive_status=$?
trap - EXIT
echo "==== the disruptive containers, on clusters of their own ($log)"
cat "$log"
echo "==== e2e: parallel run exit $status, disruptive run exit $disruptive_status"
if [ "$status" -ne 0 ] || [ "$disruptive_status" -ne 0 ]; then
  exit 1
fi
