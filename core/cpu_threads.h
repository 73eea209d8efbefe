/* The C kernels' threads (its text goes before each kernel's own: core/cpu_kernels.py). Each kernel shares its work
   out as items its threads take in turn until none is left, so a thread slowed by other work on its core takes
   fewer, and a thread that cannot be started leaves its items to the others.

   The helper threads are started once and kept, asleep between calls: a denoising step calls the kernels about 150
   times, and starting a thread for each call cost 40-70 us a thread (the LayerNorm of a width-0.25 Klein block,
   768 x 768 values, takes 220 us on one core). They do not spin while they wait: spinning took cores from the
   BLAS products between the calls (a width-0.25 step 1.21-1.26 s with 100-1000 us of spinning, 1.14-1.21
   without). A call made while another thread's call has the helpers starts threads of its own; a child process
   (fork) starts helpers of its own. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_setname_np */
#endif
#include <pthread.h>

#define HELPER_NAME "quantbench-cpu" /* as ps, top and /proc show the helpers */

#define MAX_THREADS 64

/* The thread count asked for, at least 1 and at most MAX_THREADS. */
static inline int bounded_threads(int threads) {
    return threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
}

static struct {
    pthread_mutex_t caller;         /* held by the call that has the helpers */
    pthread_mutex_t lock;           /* guards the rest */
    pthread_cond_t wake, finished;
    void *(*work)(void *);
    void *argument;
    long job;                       /* counts the calls: a helper takes part in each at most once */
    int wanted, running, helpers;   /* helpers the call may still take, helpers in it, helpers started */
    int fork_handler;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void *helper(void *unused) {
    (void)unused;
    pthread_mutex_lock(&pool.lock);
    long seen = pool.job;
    for (;;) {
        while (pool.job == seen || pool.wanted == 0) {
            seen = pool.wanted == 0 ? pool.job : seen; /* a call closed before this helper woke: not its call */
            pthread_cond_wait(&pool.wake, &pool.lock);
        }
        seen = pool.job;
        pool.wanted--;
        pool.running++;
        void *(*work)(void *) = pool.work, *argument = pool.argument;
        pthread_mutex_unlock(&pool.lock);
        work(argument);
        pthread_mutex_lock(&pool.lock);
        if (--pool.running == 0) pthread_cond_signal(&pool.finished);
    }
    return NULL;
}

/* The parent's helpers do not exist in a child: it starts its own, with the locks as new. */
static void forget_helpers(void) {
    pthread_mutex_init(&pool.caller, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.finished, NULL);
    pool.wanted = pool.running = pool.helpers = 0;
}

/* Helpers started up to `count` (as many as could be); the caller holds pool.lock. */
static void start_helpers(int count) {
    if (!pool.fork_handler) pool.fork_handler = pthread_atfork(NULL, NULL, forget_helpers) == 0;
    pthread_attr_t detached;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    for (pthread_t handle; pool.helpers < count && pthread_create(&handle, &detached, helper, NULL) == 0;) {
#ifdef __linux__
        pthread_setname_np(handle, HELPER_NAME); /* named here: a helper not yet running would still have ours */
#endif
        pool.helpers++;
    }
    pthread_attr_destroy(&detached);
}

/* work(argument) on new threads beside the caller's; returns when every one has. */
static void on_new_threads(void *(*work)(void *), void *argument, int threads) {
    pthread_t handles[MAX_THREADS];
    int started = 1;
    while (started < threads && pthread_create(&handles[started], NULL, work, argument) == 0) started++;
    work(argument);
    for (int t = 1; t < started; t++) pthread_join(handles[t], NULL);
}

/* work(argument) on bounded_threads(threads) threads, the caller's among them; returns when every one has. A
   helper that wakes after the caller's work ended takes no part (work() finds no item left by then anyway). */
static void on_threads(void *(*work)(void *), void *argument, int threads) {
    threads = bounded_threads(threads);
    if (threads == 1) {
        work(argument);
        return;
    }
    if (pthread_mutex_trylock(&pool.caller) != 0) {
        on_new_threads(work, argument, threads);
        return;
    }
    pthread_mutex_lock(&pool.lock);
    start_helpers(threads - 1);
    pool.work = work;
    pool.argument = argument;
    pool.wanted = threads - 1 < pool.helpers ? threads - 1 : pool.helpers;
    pool.job++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    work(argument);
    pthread_mutex_lock(&pool.lock);
    pool.wanted = 0;
    while (pool.running > 0) pthread_cond_wait(&pool.finished, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.caller);
}
