#!/usr/bin/env bash
# Runs a command as on a CPU without AVX-512 (avx2) or without AVX (sse4): every library in the
# process sees the capped CPU and picks its kernels for it (benches/cpuid_cap.c says how). Needs
# Linux on x86-64 with CPUID faulting (`cpuid_fault` in /proc/cpuinfo) and a C compiler.
#
#   OPENBLAS_NUM_THREADS=2 benches/as_cpu.sh avx2 .venv/bin/python benches/gemm_vs_blas.py
#   benches/as_cpu.sh avx2 .venv/bin/python -m fastad
set -euo pipefail
if [[ $# -lt 2 || ( $1 != avx2 && $1 != sse4 ) ]]; then
    echo "usage: $0 avx2|sse4 COMMAND [ARGS...]" >&2
    exit 2
fi
if ! grep -q -w cpuid_fault /proc/cpuinfo; then
    echo "$0: this CPU (or its hypervisor) cannot fault CPUID: no cpuid_fault in /proc/cpuinfo" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
lib="${CARGO_TARGET_DIR:-$here/../target}/cpuid_cap.so"
if [[ ! -f $lib || $here/cpuid_cap.c -nt $lib ]]; then
    mkdir -p "$(dirname "$lib")"
    "${CC:-cc}" -O2 -shared -fPIC -o "$lib.$$" "$here/cpuid_cap.c"
    mv "$lib.$$" "$lib"  # whole, even with another run building it at the same time
fi
CPUID_CAP="$1" LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" exec "${@:2}"
