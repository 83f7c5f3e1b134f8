"""Locate and launch the real `tritonserver` that the nvidia-pytriton wheel bundles.

Used by `launch.triton_server_command` (local runner, CPU mock) and the protocol tests.
Only the wheel's server is used, never the pytriton Python package (it is installed with
--no-deps and would not even import with NumPy 2).

What the bundled server needs, found by running it on the CPU machine:
- its shared libraries (`nvidia_pytriton.libs`) on LD_LIBRARY_PATH;
- a backend directory holding libtriton_python.so, triton_python_backend_utils.py and the
  `triton_python_backend_stub` built for *this* Python version (the wheel ships one per
  version under python_backend_stubs/; we assemble the directory in a cache, never inside
  site-packages);
- for the stub's embedded interpreter, this virtualenv: the stub initialises Python with an
  *isolated* config, so PYTHONPATH is ignored; it locates its prefix by looking up
  `python3` on PATH and reading that venv's pyvenv.cfg. So the venv's bin/ goes first on
  PATH. The stub links `libpythonX.Y.so.1.0`; when this interpreter ships one (pyenv,
  python.org builds) its directory goes on LD_LIBRARY_PATH so the stub runs the same
  CPython build as the venv, else the system one (Debian's libpython3.X) is used.
- `tritonserver` has no --version flag: the version is read from the option table it
  prints at start-up (`server_version`), by a probe run with every endpoint disabled.
"""

from __future__ import annotations

import ctypes.util
import filecmp
import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bakeoff_serve import process

WHEEL: Final = "nvidia-pytriton"
MAKE_HINT: Final = "run `make venv` (it installs the nvidia-pytriton wheel with --no-deps)"
_VERSION_LINE = re.compile(r"\|\s*server_version\s*\|\s*(\S+)\s*\|")


class TritonNotInstalledError(RuntimeError):
    """The wheel, or a file of it that we need, is missing; the message says what to do."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path  # bin/tritonserver
    libs_dir: Path  # the wheel's bundled shared libraries
    stub: Path  # triton_python_backend_stub for this Python version
    backend_library: Path  # backends/python/libtriton_python.so
    backend_utils: Path  # backends/python/triton_python_backend_utils.py
    wheel_version: str  # nvidia-pytriton version, e.g. "0.7.0"
    version: str  # Triton server version, e.g. "2.51.0"
    python_version: str  # "3.11": the stub's Python ABI


def default_cache_dir() -> Path:
    """Bakeoff's cache root: $BAKEOFF_CACHE_DIR, else ~/.cache/bakeoff."""
    override = os.environ.get("BAKEOFF_CACHE_DIR")
    return Path(override) if override else Path.home() / ".cache" / "bakeoff"


def parse_server_version(log_text: str) -> str | None:
    """`server_version` from the option table tritonserver prints at start-up."""
    match = _VERSION_LINE.search(log_text)
    return match.group(1) if match else None


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise TritonNotInstalledError(f"{what} not found at {path}; {MAKE_HINT}")
    return path


def _server_root() -> tuple[Path, Path, str]:
    """(pytriton/tritonserver, nvidia_pytriton.libs, wheel version) without importing pytriton."""
    try:
        distribution = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise TritonNotInstalledError(
            f"the {WHEEL} wheel is not installed in {sys.prefix}; {MAKE_HINT}"
        ) from None
    spec = importlib.util.find_spec("pytriton")  # locates the package, does not import it
    if spec is None or spec.origin is None:
        raise TritonNotInstalledError(f"{WHEEL} is registered but pytriton/ is gone; {MAKE_HINT}")
    root = Path(spec.origin).parent / "tritonserver"
    libs = Path(str(distribution.locate_file("nvidia_pytriton.libs")))
    return root, libs, distribution.version


@functools.cache
def _probe_version(binary: Path, libs_dir: Path) -> str:
    """Run the server just far enough to print its option table, then let it fail."""
    env = {**os.environ, "LD_LIBRARY_PATH": _join_paths([str(libs_dir)], os.environ)}
    missing_repo = "/nonexistent/bakeoff-version-probe"
    argv = [
        str(binary),
        f"--model-repository={missing_repo}",
        "--allow-http=false",
        "--allow-grpc=false",
        "--allow-metrics=false",
    ]
    try:
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TritonNotInstalledError(f"could not run {binary}: {error}; {MAKE_HINT}") from error
    output = result.stdout + result.stderr
    version = parse_server_version(output)
    if version is None:
        tail = "\n".join(output.splitlines()[-15:])
        raise TritonNotInstalledError(
            f"{binary} did not report its version (exit {result.returncode}):\n{tail}"
        )
    return version


def find_tritonserver() -> TritonInstall:
    """The bundled tritonserver and the Python-backend files for this interpreter."""
    root, libs_dir, wheel_version = _server_root()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binary = _require(root / "bin" / "tritonserver", "the tritonserver binary")
    _require(libs_dir, "the wheel's shared libraries")
    stubs = root / "python_backend_stubs"
    stub = stubs / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        shipped = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise TritonNotInstalledError(
            f"{WHEEL} {wheel_version} has no Python-backend stub for Python {python_version} "
            f"(it ships {', '.join(shipped) or 'none'}); recreate the venv with one of those "
            f"Pythons: {MAKE_HINT}"
        )
    libpython = f"libpython{python_version}"
    system_libpython = ctypes.util.find_library(f"python{python_version}")
    if not (_own_libpython_dir(python_version) or system_libpython):
        raise TritonNotInstalledError(
            f"the Python-backend stub needs {libpython}.so.1.0, which neither this interpreter "
            f"nor the system provides; install it (Debian/Ubuntu: apt-get install {libpython})"
        )
    backend_dir = root / "backends" / "python"
    return TritonInstall(
        binary=binary,
        libs_dir=libs_dir,
        stub=stub,
        backend_library=_require(backend_dir / "libtriton_python.so", "the Python backend"),
        backend_utils=_require(
            backend_dir / "triton_python_backend_utils.py", "triton_python_backend_utils.py"
        ),
        wheel_version=wheel_version,
        version=_probe_version(binary, libs_dir),
        python_version=python_version,
    )


def _own_libpython_dir(python_version: str) -> Path | None:
    """The directory of this interpreter's shared libpython, if it was built with one."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and (Path(libdir) / f"libpython{python_version}.so.1.0").is_file():
        return Path(libdir)
    return None


def _install_file(source: Path, target: Path) -> None:
    """Copy unless an identical file is there; rename into place so readers never see half."""
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copy2(source, tmp)  # copy2 keeps the stub's executable bit
    os.replace(tmp, target)


def prepare_backend_directory(install: TritonInstall, cache_dir: Path | None = None) -> Path:
    """`--backend-directory` for this install: python/ with library, utils and our stub.

    Idempotent and safe to call from parallel runs. Keyed by Triton and Python version,
    because the stub inside is specific to the Python version.
    """
    root = cache_dir if cache_dir is not None else default_cache_dir()
    backends = root / f"tritonserver-{install.version}-py{install.python_version}" / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    _install_file(install.backend_library, python_dir / "libtriton_python.so")
    _install_file(install.backend_utils, python_dir / "triton_python_backend_utils.py")
    _install_file(install.stub, python_dir / "triton_python_backend_stub")
    return backends


def _join_paths(first: Sequence[str], inherit_env: Mapping[str, str], var: str = "") -> str:
    """`first` entries, then the inherited value of `var` (default LD_LIBRARY_PATH)."""
    inherited = inherit_env.get(var or "LD_LIBRARY_PATH", "")
    return os.pathsep.join([*first, *([inherited] if inherited else [])])


def tritonserver_command(
    install: TritonInstall,
    repo_dir: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    *,
    backend_dir: Path,
    log_verbose: int = 0,
    python_env: Path | None = None,
    bind_address: str = "127.0.0.1",
    gpu_metrics: bool = False,
    inherit_env: Mapping[str, str] | None = None,
) -> process.Command:
    """The command line and environment that serve `repo_dir`. Pure: builds, never runs.

    `python_env` is the virtualenv whose packages (numpy, onnxruntime) the models import
    (default: this interpreter's sys.prefix); `inherit_env` supplies PATH and
    LD_LIBRARY_PATH to extend (default: os.environ). `bind_address` is loopback for local
    runs; images pass 0.0.0.0.
    """
    env_in = os.environ if inherit_env is None else inherit_env
    venv = python_env if python_env is not None else Path(sys.prefix)
    libpython_dir = _own_libpython_dir(install.python_version)
    lib_dirs = [str(install.libs_dir), *([str(libpython_dir)] if libpython_dir else [])]
    argv = [
        str(install.binary),
        # Absolute: tritonserver resolves a relative repository against model version dirs.
        f"--model-repository={repo_dir.absolute()}",
        f"--backend-directory={backend_dir}",
        f"--http-address={bind_address}",
        f"--http-port={http_port}",
        f"--grpc-address={bind_address}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={bind_address}",
        f"--metrics-port={metrics_port}",
        f"--allow-gpu-metrics={'true' if gpu_metrics else 'false'}",
        # Our config.pbtxt is complete; auto-complete would also start an extra stub per
        # model just to ask it for a config.
        "--disable-auto-complete-config",
        "--model-control-mode=none",
        # A model that fails to load stops the server, so a start fails fast and loudly.
        "--exit-on-error=true",
        # /v2/health/ready only once every model is loaded and warmed up.
        "--strict-readiness=true",
        "--exit-timeout-secs=5",
        f"--log-verbose={log_verbose}",
    ]
    env = {
        "LD_LIBRARY_PATH": _join_paths(lib_dirs, env_in),
        # The stub finds its interpreter prefix (and so site-packages) through PATH.
        "PATH": _join_paths([str(venv / "bin")], env_in, "PATH"),
    }
    # Probe readiness over loopback when the server listens on every interface.
    host = "127.0.0.1" if bind_address in ("0.0.0.0", "::", "") else bind_address
    return process.Command(
        argv=argv, env=env, ready_url=f"http://{host}:{http_port}/v2/health/ready"
    )
