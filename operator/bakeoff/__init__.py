"""bakeoff: the BenchmarkSuite API, planning, local runner, analysis, report and CLI."""

from importlib import metadata

try:
    __version__ = metadata.version("bakeoff")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
