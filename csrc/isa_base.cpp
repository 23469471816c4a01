// The kernels compiled for the baseline x86-64 / any target (SSE2 on x86-64),
// used when the CPU lacks AVX2 or FMA.
#include <omp.h>
#include <stdlib.h>

#include "kernels_api.h"

#define MLKD_ISA base
#include "isa_kernels.inc"
#undef MLKD_ISA
