#!/usr/bin/env bash
# Builds fastpacket instrumented for atheris into a new virtual environment:
# the extension compiled by clang with AddressSanitizer, UndefinedBehavior-
# Sanitizer and libFuzzer's coverage hooks (-fsanitize=fuzzer-no-link), so
# atheris sees the native code's branches and memory errors abort the run.
# Run the targets over it with FUZZ_SANITIZED=1 fuzz/run.sh (README, Fuzzing).
#
#   fuzz/build_sanitized.sh VENV [PYTHON]
#
# vptr and function are left out: atheris ships its sanitizer runtime
# (asan_with_fuzzer.so) from a newer LLVM than Debian's clang 14, whose
# handlers for those two checks it lacks (vptr also needs the C++ UBSan
# runtime). pointer-overflow is recoverable so that fuzz/atheris/ubsan.supp
# can silence a known report; UBSAN_OPTIONS=halt_on_error=1 stops on any other.
set -euo pipefail
venv="${1:?usage: fuzz/build_sanitized.sh VENV [PYTHON]}"
python="${2:-python3}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
flags="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize=vptr,function -fno-sanitize-recover=all"
flags="$flags -fsanitize-recover=pointer-overflow -fno-omit-frame-pointer"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q scikit-build-core cython cython-cmake ninja cmake numpy lz4 atheris
CC=clang CXX=clang++ "$venv/bin/python" -m pip install -q --no-build-isolation -Cbuild-dir="$venv/build" \
    -Ccmake.build-type=RelWithDebInfo -Ccmake.define.CMAKE_CXX_FLAGS="$flags" "$repo"
# the instrumented module imports only with the sanitizer runtime preloaded
runtime="$("$venv/bin/python" -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')"
LD_PRELOAD="$runtime" ASAN_OPTIONS=detect_leaks=0 "$venv/bin/python" -c \
    "import fastpacket; print('sanitized fastpacket', fastpacket.__version__, 'built in $venv')"
