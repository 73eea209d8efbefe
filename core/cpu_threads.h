/* The C kernels' threads (its text goes before each kernel's own: core/cpu_kernels.py). Each kernel shares its work
   out as items its threads take in turn until none is left, so a thread slowed by other work on its core takes
   fewer, and a thread that cannot be started leaves its items to the others. */
#include <pthread.h>

#define MAX_THREADS 64

/* The thread count asked for, at least 1 and at most MAX_THREADS. */
static inline int bounded_threads(int threads) {
    return threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
}

/* work(argument) on bounded_threads(threads) threads, the caller's among them; returns when every one has. */
static void on_threads(void *(*work)(void *), void *argument, int threads) {
    pthread_t handles[MAX_THREADS];
    int started = 1;
    threads = bounded_threads(threads);
    while (started < threads && pthread_create(&handles[started], NULL, work, argument) == 0) started++;
    work(argument);
    for (int t = 1; t < started; t++) pthread_join(handles[t], NULL);
}
