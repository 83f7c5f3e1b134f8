#!/usr/bin/env bash
# Build the chart tooling (helm, kubeconform) from their Go modules into the cache.
#
# Used by `make chart-test` and tests/chart/. Same conventions as hack/control-plane.sh: the
# installed Go, CGO off, `nice -n 19`, binaries in ~/.cache/bakeoff/tools/bin/ (BAKEOFF_CACHE
# overrides ~/.cache/bakeoff), build durations appended to ~/.cache/bakeoff/tools/build-times.txt.
# Only missing binaries are built, so calling it again is free.
#
#   hack/build-tools.sh build    # build what is missing
#   hack/build-tools.sh path     # print the bin directory (the only stdout output)
#   hack/build-tools.sh helm ... # run the cached helm (kubeconform likewise)
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-3.22.0}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-0.8.0}
CACHE=${BAKEOFF_CACHE:-$HOME/.cache/bakeoff}
BIN=$CACHE/tools/bin
NICE=${NICE:-nice -n 19}
export CGO_ENABLED=0
export GOFLAGS=${GOFLAGS:--buildvcs=false}

log() { printf '==> %s\n' "$*" >&2; }

build_one() { # name, package@version, extra go args...
  local name=$1 pkg=$2; shift 2
  # A stamp next to the binary (package and flags), so bumping a version rebuilds.
  local stamp="$pkg $*"
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/$name.version" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  mkdir -p "$BIN"
  log "building $name ($pkg)"
  local start end
  start=$(date +%s)
  # GOBIN in a private temp dir and a rename, so a parallel caller never sees half a binary.
  local tmp
  tmp=$(mktemp -d "$BIN/.tmp-$name.XXXX")
  GOBIN=$tmp $NICE go install -trimpath "$@" "$pkg"
  mv "$tmp/$name" "$BIN/$name" && rmdir "$tmp"
  echo "$stamp" >"$BIN/$name.version"
  end=$(date +%s)
  echo "$name $((end - start))s $(stat -c %s "$BIN/$name")" >>"$BIN/../build-times.txt"
  log "$name built in $((end - start))s"
}

cmd_build() {
  # helm's Makefile sets these with ldflags: its version string (else "v3.x-dev") and the
  # Kubernetes version that `helm template`/`lint`/`install --dry-run=client` assume, taken
  # from the client-go helm builds against (else v1.20, which fails kubeVersion checks).
  local k8s_minor
  k8s_minor=$(cd "$(mktemp -d)" && go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" |
    sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]}')
  local h=helm.sh/helm/v3
  build_one helm "$h/cmd/helm@v$HELM_VERSION" -ldflags "-s -w -X $h/internal/version.version=v$HELM_VERSION \
-X $h/pkg/lint/rules.k8sVersionMajor=1 -X $h/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
-X $h/pkg/chartutil.k8sVersionMajor=1 -X $h/pkg/chartutil.k8sVersionMinor=$k8s_minor"
  build_one kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@v$KUBECONFORM_VERSION" -ldflags "-s -w"
}

case ${1:-build} in
  build) cmd_build ;;
  path) echo "$BIN" ;;
  helm | kubeconform) name=$1; shift; cmd_build; exec "$BIN/$name" "$@" ;;
  *) echo "usage: $0 build|path|helm ARGS|kubeconform ARGS" >&2; exit 2 ;;
esac
