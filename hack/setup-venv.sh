#!/usr/bin/env bash
# Create or refresh the project's virtualenv: everything `make demo` and `make test` need,
# from the package registries only. Re-running it on a warm machine takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing bakeoff and its dependencies into $VENV (first run downloads PyTorch)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# pyproject.toml's [tool.bakeoff] no-deps: the nvidia-pytriton wheel, used only for the
# tritonserver binary it bundles (its Python dependencies, numpy<2 among them, are not needed).
mapfile -t no_deps < <("$VENV/bin/python" images/requirements.py --no-deps)
"$VENV/bin/python" -m pip install -q --no-deps "${no_deps[@]}"

# The Python-backend stub in that wheel embeds libpythonX.Y from the system.
pyver=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if ! ldconfig -p | grep -q "libpython${pyver}.so.1.0"; then
  echo "==> installing libpython${pyver} (tritonserver's Python backend stub links it)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "libpython${pyver}"
  else
    echo "ERROR: libpython${pyver}.so.1.0 is missing; install the libpython${pyver} package" >&2
    exit 1
  fi
fi
echo "==> virtualenv ready: $VENV"
