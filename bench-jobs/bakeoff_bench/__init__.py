"""bakeoff_bench: the load generator that the benchmark Job (and `bakeoff run --local`) runs.

It speaks the Open Inference Protocol (KServe v2) to any backend, measures latency and
throughput per scenario, and diffs the server's Triton-named Prometheus metrics over exactly
the measured window. Input is a `BenchConfig`, output a `CellResult` (both pydantic, JSON).
"""
