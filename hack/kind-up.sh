#!/usr/bin/env bash
# The users' local path (needs Docker, kind, kubectl and helm): a kind cluster with nodes
# labelled like pools, Bakeoff's images built and loaded, the chart installed in CPU-mock
# mode, and the CPU-mock suite applied. `hack/kind-up.sh down` deletes the cluster.
# Without a registry, hack/node.sh and the node test tier give the same proof (tests/node).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-bakeoff}
TAG=${BAKEOFF_TAG:-dev}
NAMESPACE=${BAKEOFF_NAMESPACE:-bakeoff}

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
# kind's nodes have no GPU: the serve image with CPU-only torch (a few hundred MB, not GBs).
build() { # name, tag, extra docker build args...
  local name=$1 ref=bakeoff/$1:$2; shift 2
  echo "==> building $ref"
  docker build -q -f "images/$name/Dockerfile" -t "$ref" "$@" .
  kind load docker-image --name "$CLUSTER" "$ref"
}
build operator "$TAG"
build bench-job "$TAG"
build serve "$TAG-cpu" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
echo "==> installing the chart (CPU-mock mode) into namespace $NAMESPACE"
helm upgrade --install bakeoff charts/bakeoff --namespace "$NAMESPACE" --create-namespace \
  --set cpuMock=true \
  --set operator.image.repository=bakeoff/operator --set operator.image.tag="$TAG" \
  --set images.cpuMock="bakeoff/serve:$TAG-cpu" --set images.bench="bakeoff/bench-job:$TAG" \
  --set images.modelPrep="bakeoff/serve:$TAG-cpu" --set images.pytorch="bakeoff/serve:$TAG-cpu" \
  --wait
kubectl -n "$NAMESPACE" apply -f examples/cpu-mock.yaml
echo
echo "Applied examples/cpu-mock.yaml. Watch it:"
echo "  kubectl -n $NAMESPACE get benchmarksuites -w"
echo "  bakeoff report cpu-mock --cluster -n $NAMESPACE"
