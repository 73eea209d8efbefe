/* Whether a kernel's AVX-512 forms are built (HAS_AVX512_FORMS: x86-64 with GCC or Clang) and may run here
   (avx512_here). Its text goes before each kernel's own, after cpu_threads.h (core/cpu_kernels.py). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAS_AVX512_FORMS 1
/* `vectors` = 0: the caller asks for its plain C forms even here. */
static inline int avx512_here(int vectors) { return vectors && __builtin_cpu_supports("avx512f"); }
#else
static inline int avx512_here(int vectors) { (void)vectors; return 0; }
#endif
