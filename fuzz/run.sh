#!/usr/bin/env bash
# Runs every fuzz target for a while, starting from its seed corpus: the six
# atheris targets (fuzz/atheris) over the fastpacket that $PYTHON imports,
# and the two libFuzzer targets (fuzz/libfuzzer), built here with clang under
# AddressSanitizer + UndefinedBehaviorSanitizer. Stops with a non-zero exit
# at the first crash, sanitizer report, hang or oracle mismatch, and leaves
# the input that caused it in $FUZZ_WORK/artifacts.
#
#   fuzz/run.sh [SECONDS]      # per target, default 5
#
# Environment:
#   PYTHON          interpreter that imports fastpacket and atheris (python3)
#   FUZZ_WORK       where new corpus entries, logs and artifacts go (a new temp dir)
#   FUZZ_TARGETS    which targets (default: all; names as in fuzz/corpus/)
#   FUZZ_SANITIZED  1: fastpacket was built with -fsanitize=address,undefined,
#                   fuzzer-no-link (README, Fuzzing): preload atheris' ASan runtime
#   CXX             compiler for the libFuzzer targets (clang++)
set -euo pipefail

seconds="${1:-5}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"
work="${FUZZ_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fastpacket-fuzz.XXXXXX")}"
targets="${FUZZ_TARGETS:-feed decoder_aggregate aggregator ring sendbuf layout framing aggregate}"
mkdir -p "$work/artifacts" "$work/corpus"

# -timeout: seconds one input may take (a hang is a finding);
# -rss_limit_mb: memory one run may hold (unbounded memory is a finding).
flags=(-max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1)
preload=()
if [ "${FUZZ_SANITIZED:-0}" = 1 ]; then
    asan_rt="$("$python" -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')"
    preload=(env "LD_PRELOAD=$asan_rt")
    export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=64"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$here/atheris/ubsan.supp"
fi

run_target() {  # name, command...
    local name="$1"
    shift
    mkdir -p "$work/corpus/$name"
    if ! "$@" "${flags[@]}" -artifact_prefix="$work/artifacts/$name-" \
            "$work/corpus/$name" "$here/corpus/$name" >"$work/$name.log" 2>&1; then
        tail -n 60 "$work/$name.log" >&2
        echo "fuzz: $name FAILED; its input and log are under $work" >&2
        return 1
    fi
    printf '%-18s %s\n' "$name" "$(grep -E '^Done ' "$work/$name.log" | tail -n 1)"
}

built=0
for name in $targets; do
    case "$name" in
        framing | aggregate)
            if [ "$built" = 0 ]; then
                cmake -S "$repo" -B "$work/build" -DFASTPACKET_FUZZ=ON -DCMAKE_CXX_COMPILER="${CXX:-clang++}" \
                    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$work/cmake.log"
                cmake --build "$work/build" -j 2 --target fuzz_framing fuzz_aggregate >>"$work/cmake.log"
                built=1
            fi
            run_target "$name" "$work/build/fuzz/libfuzzer/fuzz_$name"
            ;;
        *)
            run_target "$name" "${preload[@]}" "$python" "$here/atheris/fuzz_$name.py"
            ;;
    esac
done
echo "fuzz: no crash, sanitizer report or mismatch ($work)"
