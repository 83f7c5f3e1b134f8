# Bakeoff developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.bakeoff-installed
SUITE ?= examples/cpu-mock.yaml
PYTEST_FLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List every entry point
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml hack/setup-venv.sh
	VENV=$(VENV) hack/setup-venv.sh
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create the virtualenv and install everything (idempotent)

.PHONY: demo
demo: $(STAMP) ## Run the CPU-mock bake-off locally: prints the verdict, writes results/ and the report
	$(BIN)/bakeoff run $(SUITE) --local

.PHONY: test
test: $(STAMP) ## Install, lint, typecheck, then the tiers unit, protocol, local, chart, cluster, node (not gpu)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy operator/bakeoff bench-jobs/bakeoff_bench images/serve/bakeoff_serve
	$(BIN)/pytest tests/unit tests/protocol tests/local $(PYTEST_FLAGS)
	hack/build-tools.sh build
	$(BIN)/pytest tests/chart $(PYTEST_FLAGS)
	$(MAKE) test-cluster
	$(MAKE) test-node
	@echo "==> not run here: the gpu tier (tests/gpu) needs a CUDA device; run 'make test-gpu' on a GPU machine"

.PHONY: test-unit
test-unit: $(STAMP) ## Pure logic only: no servers
	$(BIN)/pytest tests/unit $(PYTEST_FLAGS)

.PHONY: test-protocol
test-protocol: $(STAMP) ## tritonclient and the load generator against real servers on loopback
	$(BIN)/pytest tests/protocol $(PYTEST_FLAGS)

.PHONY: test-local
test-local: $(STAMP) ## The whole `bakeoff run --local` pipeline on the CPU-mock suite
	$(BIN)/pytest tests/local $(PYTEST_FLAGS)

.PHONY: lint
lint: $(STAMP) ## ruff check, format check, import layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict over the three packages
	$(BIN)/mypy operator/bakeoff bench-jobs/bakeoff_bench images/serve/bakeoff_serve

.PHONY: clean
clean: ## Remove results and caches (keeps the virtualenv)
	rm -rf results .pytest_cache .mypy_cache .ruff_cache

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ from the API models
	$(BIN)/python -m bakeoff.crd --output crds/benchmarksuite.yaml

.PHONY: verify
verify: $(STAMP) ## Fail if generated files are stale: regenerate crds/ and the chart's copies into a temp dir and diff
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BIN)/python -m bakeoff.crd --output "$$tmp/benchmarksuite.yaml" && \
	  if ! diff -u crds/benchmarksuite.yaml "$$tmp/benchmarksuite.yaml"; then \
	    echo "crds/benchmarksuite.yaml is stale: run 'make crds' and commit it" >&2; exit 1; \
	  fi && \
	  $(MAKE) --no-print-directory generate GENERATE_OUT="$$tmp/chart" && \
	  if ! { diff -u $(CHART)/$(CHART_CRD) "$$tmp/chart/$(CHART_CRD)" && \
	         { [ ! -f dashboards/bakeoff.json ] || \
	           diff -u $(CHART)/$(CHART_DASHBOARD) "$$tmp/chart/$(CHART_DASHBOARD)"; }; }; then \
	    echo "the chart's generated copies are stale: run 'make generate' and commit them" >&2; exit 1; \
	  fi

.PHONY: bench
bench: $(STAMP) ## Benchmarks that print numbers: the load generator vs wrk and locust; open-loop rate vs client processes (saturation table); vs perf_analyzer on one tritonserver; the operator under load (20 suites x 9 cells, 60 simulated GPU nodes)
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { \
	  echo "==> installing wrk and nginx (Debian packages) for the load-generator benchmark"; \
	  apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null; }
	$(PY) benchmarks/loadgen.py --out results/bench/loadgen.json
	$(PY) benchmarks/saturation.py --out results/bench/saturation.json
	$(PY) benchmarks/peer_check.py --out results/bench/peer_check.json
	@# The operator load benchmark installs the chart (helm) on the local control plane.
	hack/build-tools.sh build
	hack/control-plane.sh up >/dev/null
	$(PY) benchmarks/operator_load.py --out results/bench/operator_load.json

.PHONY: test-gpu
test-gpu: ## On a CUDA machine: the GPU serving paths' correctness (fails without CUDA)
	PYTHONPATH=operator:bench-jobs:images/serve$${PYTHONPATH:+:$$PYTHONPATH} \
	  $(if $(wildcard $(PY)),$(PY),python3) -m pytest tests/gpu -p no:cacheprovider $(PYTEST_FLAGS)

.PHONY: gpu-bench-onnxruntime
gpu-bench-onnxruntime: ## On a CUDA machine with onnxruntime-gpu: the onnxruntime kind served vs in-process
	PYTHONPATH=operator:bench-jobs:images/serve$${PYTHONPATH:+:$$PYTHONPATH} \
	  $(if $(wildcard $(PY)),$(PY),python3) benchmarks/ort_bench.py --out results/bench/gpu-onnxruntime.json

.PHONY: gpu-bench
gpu-bench: ## On a CUDA machine: ceilings (in-process, bare forward) vs served PyTorch (1-4 workers) and Triton, scaling over GPUs, targets
	PYTHONPATH=operator:bench-jobs:images/serve$${PYTHONPATH:+:$$PYTHONPATH} \
	  $(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_bench.py --out results/bench/gpu.json $(GPU_BENCH_FLAGS)

.PHONY: test-cluster
test-cluster: $(STAMP) ## The operator and the chart on a real control plane (builds or reuses it)
	hack/build-tools.sh build
	hack/control-plane.sh up
	@# Two processes: kopf's timer interval and the operator's settings are fixed when
	@# bakeoff.handlers is first imported, and the chart test imports it with the chart's.
	$(BIN)/pytest tests/cluster --ignore=tests/cluster/test_chart_install.py $(PYTEST_FLAGS)
	$(BIN)/pytest tests/cluster/test_chart_install.py $(PYTEST_FLAGS)

.PHONY: images
images: ## Build the images (operator, bench-job, serve) without a registry: debootstrap base, Docker engine started if needed
	hack/images.sh build

.PHONY: node-up
node-up: ## Start (building once) the node tier's cluster: a real node (kubelet, containerd) beside kwok GPU pools
	hack/node.sh up

.PHONY: node-down
node-down: ## Stop the real node and its cluster; leave no pod, mount, interface or rule behind
	hack/node.sh down

.PHONY: test-node
test-node: $(STAMP) ## Real pods: images built here, the chart installed, the CPU-mock suite on a real node, Prometheus
	@command -v prometheus >/dev/null || { \
	  echo "==> installing prometheus (Debian package) for the node tier"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	hack/build-tools.sh build
	hack/images.sh build
	hack/node.sh up
	$(BIN)/pytest tests/node $(PYTEST_FLAGS)

.PHONY: kind-up
kind-up: ## Users with Docker: kind cluster, images built and loaded, chart (CPU mock), suite applied
	hack/kind-up.sh

.PHONY: kind-down
kind-down: ## Delete the kind cluster of kind-up
	hack/kind-up.sh down

.PHONY: cluster-up
cluster-up: ## Start (building once) the local control plane; prints the kubeconfig path
	hack/control-plane.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane (hack/control-plane.sh) and delete its state
	hack/control-plane.sh down

# ----- Helm chart (charts/bakeoff/) ----------------------------------------------------------
# Helm reads nothing outside the chart directory, so `generate` copies the CRD (wrapped in the
# crds.enabled / crds.keep gate) and the Grafana dashboard into it; `verify` diffs the copies.
CHART := charts/bakeoff
GENERATE_OUT ?= $(CHART)
CHART_CRD := templates/crds/benchmarksuite.yaml
CHART_DASHBOARD := files/bakeoff.json

.PHONY: generate
generate: ## Copy crds/ and dashboards/ into the chart (templates/crds/ behind crds.enabled, files/)
	@mkdir -p $(GENERATE_OUT)/templates/crds $(GENERATE_OUT)/files
	@{ echo '{{- if .Values.crds.enabled }}'; \
	  echo '# Generated by `make generate` from crds/benchmarksuite.yaml; do not edit.'; \
	  awk '{ print } /^metadata:$$/ && !done { \
	    print "  labels:"; \
	    print "    {{- include \"bakeoff.labels\" . | nindent 4 }}"; \
	    print "  {{- if .Values.crds.keep }}"; \
	    print "  annotations:"; \
	    print "    # helm uninstall leaves the CRD, and so every suite, in place."; \
	    print "    helm.sh/resource-policy: keep"; \
	    print "  {{- end }}"; done = 1 }' crds/benchmarksuite.yaml | grep -v '^# Generated by `make crds`'; \
	  echo '{{- end }}'; } >$(GENERATE_OUT)/$(CHART_CRD)
	@if [ -f dashboards/bakeoff.json ]; then cp dashboards/bakeoff.json $(GENERATE_OUT)/$(CHART_DASHBOARD); \
	  else echo "WARNING: dashboards/bakeoff.json not found; $(CHART)/$(CHART_DASHBOARD) not updated" >&2; fi

.PHONY: chart-tools
chart-tools: ## Build helm and kubeconform from their Go modules (cached in ~/.cache/bakeoff/tools)
	hack/build-tools.sh build

.PHONY: chart-test
chart-test: $(STAMP) ## helm lint, template+kubeconform, install on the local control plane
	hack/build-tools.sh build
	$(BIN)/pytest tests/chart $(PYTEST_FLAGS)
	hack/control-plane.sh up
	$(BIN)/pytest tests/cluster/test_chart_install.py $(PYTEST_FLAGS)
