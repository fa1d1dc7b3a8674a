// A preloaded library that makes a process see a CPU without AVX-512, or without AVX at all, so
// that every library in it that asks the CPU after it loads (fastad, NumPy and its OpenBLAS,
// JAX's YNNPACK and XLA) picks the kernels it would pick on such a CPU. This is how the AVX2
// figures of an AVX-512 machine are measured with every peer on its AVX2 code, not only fastad
// (FASTAD_SIMD caps fastad alone; JAX has no such switch). glibc chose its memcpy and memset
// before: those may still use AVX-512.
//
// How: Linux's CPUID faulting (arch_prctl(ARCH_SET_CPUID, 0), the `cpuid_fault` flag in
// /proc/cpuinfo) turns each CPUID instruction into a SIGSEGV. The handler runs CPUID itself,
// clears the feature bits above the cap, and steps over the instruction. Threads inherit the
// faulting. The cap comes from CPUID_CAP: "avx2" (no AVX-512, AMX or AVX10) or "sse4" (no AVX,
// FMA or F16C either). It changes what the CPU reports, not its caches or its clock.
//
// A library that takes SIGSEGV over later (Python's faulthandler: `python -X faulthandler`,
// pytest) makes the next CPUID fatal: run the measured process without it.
//
// Build and use: benches/as_cpu.sh (cc -O2 -shared -fPIC cpuid_cap.c).
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

static struct sigaction previous;
static int without_avx;

static long set_cpuid_faulting(int faulting) {
    return syscall(SYS_arch_prctl, ARCH_SET_CPUID, faulting ? 0 : 1);
}

// Clears the features above the cap in one CPUID leaf's registers.
static void cap(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    enum { EAX, EBX, ECX, EDX };
    if (leaf == 7 && sub == 0) {
        // AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL; VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ;
        // 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8.
        r[EBX] &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
        r[ECX] &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));
        r[EDX] &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
        if (without_avx) r[EBX] &= ~BIT(5);  // AVX2
    }
    if (leaf == 7 && sub == 1) {
        r[EAX] &= ~BIT(5);                    // AVX512-BF16
        r[EDX] &= ~BIT(19);                   // AVX10
        if (without_avx) r[EAX] &= ~(BIT(4) | BIT(23));  // AVX-VNNI, AVX-IFMA
    }
    if (leaf == 1 && without_avx) r[ECX] &= ~(BIT(12) | BIT(28) | BIT(29));  // FMA, AVX, F16C
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)reg[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        // Not a CPUID: hand the fault to whoever had it (by default, the process dies on it).
        sigaction(SIGSEGV, &previous, NULL);
        return;
    }
    uint32_t leaf = (uint32_t)reg[REG_RAX], sub = (uint32_t)reg[REG_RCX], r[4];
    set_cpuid_faulting(0);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    set_cpuid_faulting(1);
    cap(leaf, sub, r);
    reg[REG_RAX] = r[0];
    reg[REG_RBX] = r[1];
    reg[REG_RCX] = r[2];
    reg[REG_RDX] = r[3];
    reg[REG_RIP] += 2;
}

__attribute__((constructor)) static void install(void) {
    const char *level = getenv("CPUID_CAP");
    if (level == NULL || (strcmp(level, "avx2") != 0 && strcmp(level, "sse4") != 0)) {
        fprintf(stderr, "cpuid_cap: CPUID_CAP must be avx2 or sse4, not %s\n",
                level ? level : "unset");
        _exit(2);
    }
    without_avx = strcmp(level, "sse4") == 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, &previous);
    if (set_cpuid_faulting(1) != 0) {
        // Measuring on the uncapped CPU while believing it capped would be worse than stopping.
        perror("cpuid_cap: arch_prctl(ARCH_SET_CPUID) (no cpuid_fault in /proc/cpuinfo?)");
        _exit(2);
    }
}
