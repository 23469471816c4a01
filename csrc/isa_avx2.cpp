// The kernels compiled for AVX2 + FMA (selected at run time when the CPU has
// both; see bindings.cpp). System headers first: the target pragma must only
// cover our own code (see simd.h).
#include <omp.h>
#include <stdlib.h>

#include "kernels_api.h"

#define MLKD_ISA avx2
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "isa_kernels.inc"
#pragma GCC pop_options
#else
// Not x86: compiled like the baseline; bindings.cpp never selects it.
#include "isa_kernels.inc"
#endif
#undef MLKD_ISA
