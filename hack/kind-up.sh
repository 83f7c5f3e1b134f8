#!/usr/bin/env bash
# The users' local path (needs Docker, kind, kubectl and helm): a kind cluster with nodes
# labelled like pools, Bakeoff's images built and loaded, the chart installed in CPU-mock
# mode, and the CPU-mock suite applied. `hack/kind-up.sh down` deletes the cluster.
# CI has no Docker engine: the same chart and operator are tested on hack/control-plane.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-bakeoff}
TAG=${BAKEOFF_TAG:-dev}
NAMESPACE=${BAKEOFF_NAMESPACE:-bakeoff}
IMAGES=(operator bench-job cpu-mock)

need() { command -v "$1" >/dev/null || { echo "ERROR: $1 is needed for make kind-up: $2" >&2; exit 1; }; }

if [ "${1:-up}" = down ]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi
need docker "https://docs.docker.com/engine/install/"
need kind "go install sigs.k8s.io/kind@latest"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/ (or hack/build-tools.sh build)"
docker info >/dev/null 2>&1 || { echo "ERROR: the Docker engine is not running" >&2; exit 1; }

if ! kind get clusters | grep -qx "$CLUSTER"; then
  echo "==> creating kind cluster $CLUSTER"
  kind create cluster --config hack/kind-config.yaml --name "$CLUSTER"
fi
for image in "${IMAGES[@]}"; do
  echo "==> building bakeoff/$image:$TAG"
  docker build -q -f "images/$image/Dockerfile" -t "bakeoff/$image:$TAG" .
  kind load docker-image --name "$CLUSTER" "bakeoff/$image:$TAG"
done
echo "==> installing the chart (CPU-mock mode) into namespace $NAMESPACE"
helm upgrade --install bakeoff charts/bakeoff --namespace "$NAMESPACE" --create-namespace \
  --set cpuMock=true \
  --set operator.image.repository=bakeoff/operator --set operator.image.tag="$TAG" \
  --set images.cpuMock="bakeoff/cpu-mock:$TAG" --set images.bench="bakeoff/bench-job:$TAG" \
  --set images.modelPrep="bakeoff/cpu-mock:$TAG" --set images.pytorch="bakeoff/cpu-mock:$TAG" \
  --wait
kubectl -n "$NAMESPACE" apply -f examples/cpu-mock.yaml
echo
echo "Applied examples/cpu-mock.yaml. Watch it:"
echo "  kubectl -n $NAMESPACE get benchmarksuites -w"
echo "  bakeoff report cpu-mock --cluster -n $NAMESPACE"
