#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has PyTorch, numpy, aiohttp, prometheus_client, onnx and
# onnxruntime, but no network), fetched here for its Python and slimmed to fit what may travel
# with the working tree (64 MiB in all).
#
#   hack/gpu-wheels.sh [DIR]     default DIR: .whl (ignored by git)
#
# There: python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#
# The nvidia-pytriton wheel (55 MB) is repacked with only the Python-backend stub of the target
# Python and without the libpython3.13 that only the 3.13 stub needs: about 20 MB smaller.
#
# onnxruntime-gpu (a CUDA 13 build, 255 MB) is too large to travel at once: it is cut into
# pieces of at most 60 MiB in ORT_DIR (default .ort/), with its sha256, to carry one piece per
# call while the machine stays warm; there, join them (ORT_DIR/join.sh) and install the wheel.
set -euo pipefail

DIR=${1:-.whl}
PY=${GPU_PYTHON_VERSION:-3.12}
# The version pyproject.toml pins ([tool.bakeoff] no-deps).
PYTRITON=${PYTRITON_VERSION:-$(python3 images/requirements.py --no-deps | sed -n "s/^nvidia-pytriton==//p")}
PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64
  manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64)
# The server's and the load generator's imports that the GPU image lacks, at the versions this
# checkout's venv resolved (one version of each: two would stop the install there).
PACKAGES=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types
  typing-inspection annotated-doc anyio opentelemetry-api uvicorn h11 httptools uvloop orjson grpcio
  tritonclient python-rapidjson click psutil pytest pluggy iniconfig pygments packaging)

VENV_PIP=${VENV_PIP:-.venv/bin/pip}
mkdir -p "$DIR"
args=(--no-deps --only-binary=:all: --python-version "$PY" --implementation cp -d "$DIR" -q)
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
for name in "${PACKAGES[@]}"; do
  version=$("$VENV_PIP" show "$name" 2>/dev/null | awk '/^Version:/ {print $2}' || true)
  python3 -m pip download "${args[@]}" "$name${version:+==$version}"
done

slim=$DIR/nvidia_pytriton-$PYTRITON-py3-none-manylinux_2_35_x86_64.whl
if ! unzip -l "$slim" 2>/dev/null | grep -q 'bakeoff-slim'; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download "${args[@]}" -d "$work" "nvidia-pytriton==$PYTRITON"
  (cd "$work" && mkdir x && cd x && unzip -q ../nvidia_pytriton-*.whl \
    && find pytriton/tritonserver/python_backend_stubs -mindepth 1 -maxdepth 1 ! -name "$PY" -exec rm -rf {} + \
    && rm -f nvidia_pytriton.libs/libpython3-*.13.so.* \
    && touch pytriton/bakeoff-slim \
    && python3 - <<'EOF'
# RECORD must list exactly what the wheel holds, or pip refuses it.
import base64, hashlib, pathlib
root = pathlib.Path(".")
record = next(root.glob("*.dist-info/RECORD"))
lines = []
for path in sorted(p for p in root.rglob("*") if p.is_file() and p != record):
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
    lines.append(f"{path.as_posix()},sha256={digest.decode()},{path.stat().st_size}")
lines.append(f"{record.as_posix()},,")
record.write_text("\n".join(lines) + "\n")
EOF
  )
  rm -f "$slim"
  (cd "$work/x" && zip -q -r -9 "$OLDPWD/$slim" .)
fi
du -sh "$DIR"

ORT_DIR=${ORT_DIR:-.ort}
ORT_VERSION=${ORT_VERSION:-1.31.1}
if [ "${SKIP_ORT:-0}" != 1 ] && [ ! -f "$ORT_DIR/SHA256SUMS" ]; then
  mkdir -p "$ORT_DIR"
  python3 -m pip download "${args[@]}" -d "$ORT_DIR" "onnxruntime-gpu==$ORT_VERSION"
  wheel=$(cd "$ORT_DIR" && ls onnxruntime_gpu-*.whl)
  (cd "$ORT_DIR" && sha256sum "$wheel" > SHA256SUMS && split -b 60M -d "$wheel" "$wheel.part-" && rm "$wheel")
  cat > "$ORT_DIR/join.sh" <<JOIN
#!/bin/sh
# On the GPU machine, once every piece has arrived: the wheel back, checked.
set -e
cd "\$(dirname "\$0")"
cat $wheel.part-* > $wheel
sha256sum -c SHA256SUMS
JOIN
  chmod +x "$ORT_DIR/join.sh"
fi
[ "${SKIP_ORT:-0}" = 1 ] || ls -la "$ORT_DIR"
