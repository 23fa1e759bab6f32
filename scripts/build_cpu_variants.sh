#!/usr/bin/env bash
# Builds every x86-64 CPU variant of llama.cpp's CPU backend (GGML_CPU_ALL_VARIANTS: x64, SSE4.2, Sandy Bridge
# ... Zen 4, Sapphire Rapids) from the very sources of the installed llama-cpp-python, and copies the libraries
# (libggml-cpu-<variant>.so) into OUT_DIR. `neeko-npc bundle --cpu-variants OUT_DIR` puts them in a bundle, whose
# server then loads the best one the player's CPU can run (ggml_backend_load_all_from_path scores each).
#
#   bash scripts/build_cpu_variants.sh build/cpu-variants        # about 50 s a variant on 2 idle cores; needs cmake and a C++ compiler
#
# Why not `pip install` with GGML_CPU_ALL_VARIANTS: llama-cpp-python 0.3.36's CMake installs the variant libraries
# with no RPATH and its wheel check found none of them (docs/shipping.md). Building the targets straight from its
# vendored llama.cpp gives the same libraries for the same ggml (one ABI with the installed libggml-base).
# Safe to run again: the build folder (BUILD_DIR, default build/llama-variants) is reused.
set -euo pipefail
OUT="${1:?usage: build_cpu_variants.sh OUT_DIR}"
PY="${PYTHON:-python3}"
BUILD="${BUILD_DIR:-build/llama-variants}"
JOBS="${JOBS:-$(nproc)}"
VERSION="$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
GGML_BASE="$("$PY" -c 'import llama_cpp, pathlib; print(next((pathlib.Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so.*.*.*")).name)')"
mkdir -p "$BUILD" "$OUT"
SRC="$BUILD/llama_cpp_python-$VERSION"
if [ ! -d "$SRC" ]; then
  echo "==> fetching llama-cpp-python $VERSION's sources (the installed version)"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: -d "$BUILD" "llama-cpp-python==$VERSION"
  tar -xzf "$BUILD/llama_cpp_python-$VERSION.tar.gz" -C "$BUILD"
fi
LLAMA="$SRC/vendor/llama.cpp"
WANT="${GGML_BASE#libggml-base.so.}"
HAVE="$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$LLAMA/ggml/CMakeLists.txt" | paste -sd.)"
if [ "$WANT" != "$HAVE" ]; then
  echo "error: the installed llama.cpp is ggml $WANT but llama-cpp-python $VERSION's sources are ggml $HAVE" >&2; exit 1
fi
echo "==> configuring ggml $HAVE with every CPU variant ($BUILD/cmake)"
cmake -S "$LLAMA" -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_OPENMP=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' >"$BUILD/configure.log"
TARGETS="$(cmake --build "$BUILD/cmake" --target help | sed -n 's/^\.\.\. \(ggml-cpu-[a-z0-9_]*\)$/\1/p' | grep -v -- '-feats$' | sort -u)"
[ -n "$TARGETS" ] || { echo "error: cmake offered no ggml-cpu-* variant targets ($BUILD/configure.log)" >&2; exit 1; }
echo "==> building $(echo $TARGETS | wc -w) variants with $JOBS jobs: $(echo $TARGETS)"
start=$(date +%s)
cmake --build "$BUILD/cmake" -j "$JOBS" --target $TARGETS >"$BUILD/build.log"
n=0
for t in $TARGETS; do
  lib="$(find "$BUILD/cmake" -name "lib$t.so" -print -quit)"
  [ -n "$lib" ] || { echo "error: $t built no lib$t.so ($BUILD/build.log)" >&2; exit 1; }
  cp "$lib" "$OUT/"; n=$((n + 1))
done
echo "==> $n CPU variants of ggml $HAVE in $OUT ($(( $(date +%s) - start )) s to build): $(cd "$OUT" && ls libggml-cpu-*.so | tr '\n' ' ')"
