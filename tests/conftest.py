"""Shared by every tier: pytest puts this directory on sys.path (rootdir-relative "prepend"
imports), so helpers here (`fuzz_strategies`) import the same way from each tier."""

import os

# The protocol tier talks gRPC from the test process and then forks servers (tritonserver)
# from it. grpcio's fork support runs a pre-fork handler that waits for its threads to reach
# a safe point, and it hung one `make test` inside fork(), for good: the servers here are
# separate programs (fork, then exec), so the test process needs no gRPC in the child.
# Set before any test module imports grpc, which reads it once.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
