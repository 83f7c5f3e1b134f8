#!/usr/bin/env bash
# Build Bakeoff's images without a registry, and hand them to the real node's containerd.
#
#   hack/images.sh build [NAME...]  base image (once), then images/NAME/Dockerfile as
#                                   bakeoff/NAME:$BAKEOFF_TAG (default: every image); prints
#                                   each image's ID (its digest) and size
#   hack/images.sh list             the images built here: name, ID, size
#   hack/images.sh load [NAME...]   copy built images (default: all and the pause image) into
#                                   the node's containerd (hack/node.sh), skipping those there
#   hack/images.sh base             the base image alone
#   hack/images.sh docker-up|docker-down
#                                   start/stop the Docker engine this script started
#
# The base: `debootstrap --variant=minbase bookworm` from the machine's Debian mirror, with
# python3 and the host's CA certificates, `docker import`ed as bakeoff/base:bookworm (Debian's
# Python 3.11, like python:3.11-slim-bookworm, which the Dockerfiles use on a normal builder).
# Builds use the legacy builder (DOCKER_BUILDKIT=0): BuildKit resolves frontends and base
# images from a registry. The Dockerfiles themselves are the ones a normal builder uses; only
# --build-arg PYTHON_IMAGE differs. pip inside the builds reaches PyPI.
#
# BAKEOFF_WHEELHOUSE: a directory of wheels the serve build may take (default /opt/wheels, when
# it holds any), e.g. CPU-only torch; copied into images/wheelhouse/ (ignored by git).
# Docker's data, the base tarball and logs live in ~/.cache/bakeoff/docker (BAKEOFF_CACHE).
set -euo pipefail

HACK=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HACK")
CACHE=${BAKEOFF_CACHE:-$HOME/.cache/bakeoff}
DOCKER_DIR=$CACHE/docker
TAG=${BAKEOFF_TAG:-dev}
BASE_IMAGE=bakeoff/base:bookworm
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
PAUSE_IMAGE=bakeoff/pause:3.10.2
# What the node tier runs; `build` with no names builds these.
IMAGES=(operator bench-job serve)
# The node's containerd (hack/node.sh); images go into the namespace the kubelet uses.
NODE_RUN=${BAKEOFF_NODE_RUN:-/run/bakeoff-node}
CONTAINERD_SOCK=$NODE_RUN/containerd.sock
LOADED=$CACHE/node/loaded

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (a container engine and debootstrap)"; }

apt_install() { # package... (only those missing)
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root "installing ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# The Docker engine: the one already running, else one of our own (data under the cache).
# ---------------------------------------------------------------------------------------------
docker_ok() { docker info >/dev/null 2>&1; }

cmd_docker_up() {
  docker_ok && return 0
  apt_install docker.io containerd runc iptables
  need_root "starting dockerd"
  mkdir -p "$DOCKER_DIR"
  log "starting dockerd (data in $DOCKER_DIR/data, log $DOCKER_DIR/dockerd.log)"
  # setsid: the daemon outlives this script (and make), and holds no lock of ours.
  setsid dockerd --data-root "$DOCKER_DIR/data" --pidfile "$DOCKER_DIR/dockerd.pid" \
    >>"$DOCKER_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  local i
  for i in $(seq 1 120); do docker_ok && break; sleep 0.5; done
  docker_ok || { tail -20 "$DOCKER_DIR/dockerd.log" >&2; die "dockerd did not start"; }
}

cmd_docker_down() {
  local pid
  pid=$(cat "$DOCKER_DIR/dockerd.pid" 2>/dev/null) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    local i
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DOCKER_DIR/dockerd.pid"
}

# ---------------------------------------------------------------------------------------------
# The base image
# ---------------------------------------------------------------------------------------------
debian_mirror() {
  # The mirror this machine's apt uses (deb822 or one-line sources), else Debian's CDN.
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "${m:-http://deb.debian.org/debian}"
}

cmd_base() {
  cmd_docker_up
  local stamp="$BASE_SUITE $BASE_PACKAGES $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 &&
     [ "$(cat "$DOCKER_DIR/base.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  apt_install debootstrap
  local tarball=$DOCKER_DIR/base-$BASE_SUITE.tar
  if [ ! -s "$tarball" ] || [ "$(cat "$DOCKER_DIR/base.stamp" 2>/dev/null)" != "$stamp" ]; then
    local root start=$(date +%s) mirror
    mirror=$(debian_mirror)
    root=$(mktemp -d "$DOCKER_DIR/.base.XXXX")
    log "making the base image: debootstrap --variant=minbase $BASE_SUITE from $mirror (about a minute)"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$root" "$mirror" \
         >"$DOCKER_DIR/debootstrap.log" 2>&1; then
      tail -20 "$DOCKER_DIR/debootstrap.log" >&2
      rm -rf "$root"
      die "debootstrap failed (log: $DOCKER_DIR/debootstrap.log)"
    fi
    # The host's CA bundle (it may hold the CA of a TLS-inspecting proxy) and apt sources, so
    # pip and apt inside builds reach what the host reaches.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    cp -r /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
    [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    log "base root filesystem made in $(( $(date +%s) - start ))s"
  fi
  docker import "$tarball" "$BASE_IMAGE" >/dev/null
  echo "$stamp" >"$DOCKER_DIR/base.stamp"
  log "imported $BASE_IMAGE"
}

# ---------------------------------------------------------------------------------------------
# The pause image (the pods' sandbox): Kubernetes' own pause.c, from the k8s.io/kubernetes
# module the control plane is built from, compiled static; no registry to pull it from.
# ---------------------------------------------------------------------------------------------
cmd_pause() {
  cmd_docker_up
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  local version src ctx
  version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$HACK/k8s/go.mod")
  src=$(cd "$HACK/k8s" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  [ -f "$src" ] || die "pause.c not found in k8s.io/kubernetes $version ($src)"
  ctx=$(mktemp -d)
  gcc -Os -Wall -Werror -static -DVERSION="${PAUSE_IMAGE##*:}-bakeoff" -o "$ctx/pause" "$src"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$PAUSE_IMAGE" "$ctx" >/dev/null 2>&1 \
    || { rm -rf "$ctx"; die "building $PAUSE_IMAGE failed"; }
  rm -rf "$ctx"
  log "built $PAUSE_IMAGE from $version build/pause/linux/pause.c"
}

# ---------------------------------------------------------------------------------------------
# build / list
# ---------------------------------------------------------------------------------------------
sync_wheelhouse() {
  local src=${BAKEOFF_WHEELHOUSE:-/opt/wheels} dst=$ROOT/images/wheelhouse
  find "$dst" -maxdepth 1 -name '*.whl' -delete
  if compgen -G "$src/*.whl" >/dev/null; then
    log "wheelhouse for the serve build: $src"
    cp -l "$src"/*.whl "$dst"/ 2>/dev/null || cp "$src"/*.whl "$dst"/
  fi
}

build_one() { # name
  local name=$1 file=$ROOT/images/$1/Dockerfile ref=bakeoff/$1:$TAG logf=$DOCKER_DIR/build-$1.log
  [ -f "$file" ] || die "no images/$name/Dockerfile (images: $(cd "$ROOT/images" && ls -d */ | tr -d / | tr '\n' ' '))"
  local start=$(date +%s) hint=""
  [ "$name" = serve ] && hint=" (PyTorch from PyPI: GBs, minutes when not cached)"
  log "building $ref$hint; log: $logf"
  # The whole output goes to the log; its Step lines are the progress; its tail on failure.
  DOCKER_BUILDKIT=0 docker build --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
    -f "$file" -t "$ref" "$ROOT" >"$logf" 2>&1 &
  local pid=$! rc=0
  tail -n +1 -f --pid="$pid" "$logf" | grep --line-buffered -E '^Step [0-9]+/' | sed -u -E 's/^(.{0,106}).*/    \1/' >&2 || true
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || { tail -30 "$logf" >&2; die "building $ref failed (log: $logf)"; }
  # The build stage tagged too (all cached: instant), so that pruning the dangling images of
  # earlier builds keeps what the next build reuses (the serve image's is ~5 GB).
  DOCKER_BUILDKIT=0 docker build -q --build-arg PYTHON_IMAGE="$BASE_IMAGE" --target build \
    -f "$file" -t "bakeoff/$name-build:$TAG" "$ROOT" >/dev/null 2>&1
  log "built $ref in $(( $(date +%s) - start ))s"
}

cmd_list() {
  # The full image ID is the digest of the image's config (sha256:...): what a node that
  # loads the image (`load`) runs. A registry names a pushed image by its manifest digest
  # instead: `docker push` prints it, and it is listed here (pushed:) once pushed.
  printf '%-26s %-71s %10s\n' IMAGE DIGEST SIZE
  local name ref
  for name in "${IMAGES[@]}"; do
    ref=bakeoff/$name:$TAG
    docker image inspect "$ref" >/dev/null 2>&1 || { printf '%-26s %s\n' "$ref" "(not built)"; continue; }
    docker image inspect -f '{{.Id}} {{.Size}} {{range .RepoDigests}}{{.}},{{end}}' "$ref" |
      while read -r id size pushed; do
        printf '%-26s %-71s %7d MB\n' "$ref" "$id" $((size / 1000000))
        pushed=${pushed%,}
        [ -z "$pushed" ] || printf '  pushed: %s\n' "${pushed//,/ }"
      done
  done
}

cmd_build() {
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=("${IMAGES[@]}")
  cmd_base
  sync_wheelhouse
  local name
  for name in "${names[@]}"; do build_one "$name"; done
  cmd_pause
  # Earlier builds' images (untagged now): GBs each for serve.
  docker image prune -f >/dev/null
  cmd_list
}

# ---------------------------------------------------------------------------------------------
# load: docker save | ctr import, into the node's containerd, once per image ID
# ---------------------------------------------------------------------------------------------
ctr_node() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

cmd_load() {
  local refs=() name ref id
  [ -S "$CONTAINERD_SOCK" ] || die "the node's containerd is not running ($CONTAINERD_SOCK): hack/node.sh up"
  if [ $# -eq 0 ]; then set -- "${IMAGES[@]}" "$PAUSE_IMAGE"; fi
  for name in "$@"; do
    case $name in */*) refs+=("$name") ;; *) refs+=("bakeoff/$name:$TAG") ;; esac
  done
  mkdir -p "$LOADED"
  for ref in "${refs[@]}"; do
    id=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null) || die "$ref is not built (make images)"
    local stamp=$LOADED/$(echo "$ref" | tr '/:' '__')
    if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && ctr_node images ls -q | grep -qx "docker.io/$ref"; then
      continue
    fi
    local start=$(date +%s)
    log "loading $ref into the node's containerd"
    docker save "$ref" | ctr_node images import --no-unpack=false - >/dev/null
    echo "$id" >"$stamp"
    log "loaded $ref in $(( $(date +%s) - start ))s"
  done
}

case ${1:-build} in
  build) shift || true; cmd_build "$@" ;;
  list) cmd_docker_up; cmd_list ;;
  load) shift; cmd_load "$@" ;;
  base) cmd_base ;;
  pause) cmd_pause ;;
  docker-up) cmd_docker_up ;;
  docker-down) cmd_docker_down ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
