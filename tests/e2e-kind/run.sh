#!/usr/bin/env bash
# End to end on a real Kubernetes (kind), for machines with Docker and kind; not run in CI.
# The same scenario as operator/tests/e2e.rs: install the chart, apply the minimal cluster, wait
# for it to run with its workers registered at the head, scale up and down, kill a worker, suspend,
# delete, and check that everything is gone.
#
#   tests/e2e-kind/run.sh            # creates the kind cluster "flotilla-e2e" if missing
#   KEEP=1 tests/e2e-kind/run.sh     # leave the kind cluster and release in place afterwards
#
# Needs: docker, kind, kubectl, helm.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${KIND_CLUSTER:-flotilla-e2e}
IMAGE=${IMAGE:-flotilla:e2e}
NS=flotilla-e2e
TIMEOUT=${TIMEOUT:-180s}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH" >&2; exit 2; }
done

step() { printf '\n== %s\n' "$*"; }

cleanup() {
  if [[ -z "${KEEP:-}" ]]; then
    kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    helm uninstall flotilla -n flotilla-system >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "image $IMAGE"
docker build -t "$IMAGE" .

step "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER" >/dev/null
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "helm install"
helm upgrade --install flotilla charts/flotilla -n flotilla-system --create-namespace \
  --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" --wait --timeout "$TIMEOUT"
kubectl -n flotilla-system rollout status deployment --timeout "$TIMEOUT"

step "apply the minimal cluster"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
sed "s|image: flotilla:latest|image: $IMAGE|" examples/minimal-cluster.yaml | kubectl -n "$NS" apply -f -

wait_workers() { # wait until the cluster runs $1 ready workers, all registered at the head
  local want=$1
  kubectl -n "$NS" wait fcc/minimal --for=jsonpath='{.status.phase}'=Running --timeout "$TIMEOUT"
  kubectl -n "$NS" wait fcc/minimal --for=jsonpath='{.status.readyWorkers}'="$want" --timeout "$TIMEOUT"
  local registered
  for _ in $(seq 1 60); do
    # A worker pod has FLOTILLA_HEAD and FLOTILLA_TOKEN set, so `flotilla status` there asks the head.
    local worker
    worker=$(kubectl -n "$NS" get pods -l flotilla.dev/role=worker -o jsonpath='{.items[0].metadata.name}')
    registered=$(kubectl -n "$NS" exec "$worker" -- flotilla status 2>/dev/null | grep -cE ' (idle|busy) ' || true)
    [[ "$registered" == "$want" ]] && { echo "head: $registered workers registered"; return 0; }
    sleep 2
  done
  echo "error: the head has $registered workers registered, wanted $want" >&2
  return 1
}
wait_workers 2
kubectl -n "$NS" get fcc

step "scale up to 3, down to 1"
kubectl -n "$NS" patch fcc minimal --type merge -p '{"spec":{"workerGroups":[{"name":"default","replicas":3}]}}'
wait_workers 3
kubectl -n "$NS" patch fcc minimal --type merge -p '{"spec":{"workerGroups":[{"name":"default","replicas":1}]}}'
wait_workers 1
kubectl -n "$NS" get events --field-selector reason=DrainedWorker

step "kill a worker's process"
worker=$(kubectl -n "$NS" get pods -l flotilla.dev/role=worker -o jsonpath='{.items[0].metadata.name}')
kubectl -n "$NS" debug "$worker" --image=busybox --target=flotilla --profile=general -- kill -9 1 || \
  kubectl -n "$NS" delete pod "$worker" --wait=false
wait_workers 1

step "suspend"
kubectl -n "$NS" patch fcc minimal --type merge -p '{"spec":{"suspend":true}}'
kubectl -n "$NS" wait fcc/minimal --for=jsonpath='{.status.phase}'=Suspended --timeout "$TIMEOUT"
kubectl -n "$NS" wait pods -l flotilla.dev/cluster=minimal --for=delete --timeout "$TIMEOUT"

step "delete"
kubectl -n "$NS" delete fcc minimal --wait=true
kubectl -n "$NS" wait pods,services,secrets -l flotilla.dev/cluster=minimal --for=delete --timeout "$TIMEOUT" || true
left=$(kubectl -n "$NS" get pods,services,secrets -l flotilla.dev/cluster=minimal -o name | wc -l)
[[ "$left" == 0 ]] || { echo "error: $left objects left behind" >&2; exit 1; }
echo "ok: the scenario passed on kind"
