#!/usr/bin/env bash
# Build the pinned llama-cpp-python wheel for this machine, once, into a folder named after the
# version and the compiler flags; print that folder (for `pip install --find-links`).
#
# Why not let pip build it during the install: pip caches a wheel it built under the sdist's
# hash alone, so a wheel compiled with other flags (or on another CPU) would be reused
# silently. And the flags matter: llama.cpp compiles for the build machine's CPU
# (GGML_NATIVE), and some virtual machines advertise AMX tiles that their kernel does not
# enable, so the first matrix product dies with SIGILL. AMX is therefore left out; it only
# speeds up large int8/bf16 batches on Sapphire Rapids and later.
#
# OpenMP is left out too (GGML_OPENMP=OFF): each decode then computes on threads of ggml's
# own. With OpenMP, libgomp keeps worker threads for every thread that ever decoded (the thread
# that loaded a model, the engine thread, the embedding worker, a second model's engine); once
# they outnumber the cores it stops spinning at barriers and sleeps, and every decode took
# 1.4-2x as long (issue 28; docs/engine.md, "Building llama.cpp").
#
# Usage: scripts/llama_wheel.sh PYTHON VERSION   (HEARTH_LLAMA_CMAKE_ARGS adds CMake options)
set -euo pipefail
PYTHON=$1
VERSION=$2
FLAGS=""
if [ "$(uname -m)" = "x86_64" ]; then
  FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
export CMAKE_ARGS="${HEARTH_LLAMA_CMAKE_ARGS:-} -DGGML_OPENMP=OFF -DCMAKE_C_FLAGS='$FLAGS' -DCMAKE_CXX_FLAGS='$FLAGS'"
KEY=$(printf '%s|%s|%s' "$VERSION" "$CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)
DEST=${HEARTH_WHEEL_CACHE:-$HOME/.cache/hearth/wheels}/llama-cpp-python-$VERSION-$KEY
if ! ls "$DEST"/llama_cpp_python-"$VERSION"-*.whl > /dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION ($CMAKE_ARGS); a few minutes" >&2
  rm -rf "$DEST.partial"
  mkdir -p "$DEST.partial"
  "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps \
    "llama-cpp-python==$VERSION" -w "$DEST.partial" >&2
  mkdir -p "$DEST"
  mv "$DEST.partial"/*.whl "$DEST"/
  rm -rf "$DEST.partial"
fi
echo "$DEST"
