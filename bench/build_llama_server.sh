#!/usr/bin/env bash
# Build llama.cpp's C++ llama-server from the llama.cpp vendored in the pinned
# llama-cpp-python sdist (the same llama.cpp Hearth runs), once, cached outside the repo.
# Prints the binary's path. Usage: bench/build_llama_server.sh [PYTHON]
set -euo pipefail
PYTHON=${1:-python3}
VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
CACHE=${HEARTH_BENCH_CACHE:-$HOME/.cache/hearth/bench}
# The same CPU flags as Hearth's own build (scripts/llama_wheel.sh): native, without AMX.
FLAGS=""
if [ "$(uname -m)" = "x86_64" ]; then
  FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
DEST=$CACHE/llama-server-$VERSION-noamx
BIN=$DEST/build/bin/llama-server
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE/sdist" "$DEST"
if [ ! -d "$DEST/src" ]; then
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$CACHE/sdist" >&2
  tmp=$(mktemp -d "$DEST/.extract-XXXX")
  tar xzf "$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
  mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DEST/src"
  rm -rf "$tmp"
fi
# No network during the build: no prebuilt web UI, no curl/openssl downloads.
cmake -S "$DEST/src" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" >&2
cmake --build "$DEST/build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
