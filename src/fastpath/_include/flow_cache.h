/* Each thread's flow cache for policy classification, allocated on first use and freed
 * when the thread exits. Per thread because an entry written half by one thread and half
 * by another could name the wrong policy; entries carry the uid of the table that answered,
 * so a new table never trusts an old answer. The bucket hash is seeded per thread from the
 * kernel's random source, so chosen flows cannot be aimed at one bucket. */
#ifndef FASTPATH_FLOW_CACHE_H
#define FASTPATH_FLOW_CACHE_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef struct {
    uint64_t seed[6];           /* odd multipliers of the bucket hash */
    uint64_t hits, misses;
    void *entries;              /* the caller's bucket array, zeroed: every entry empty */
} fp_flow_cache_t;

static pthread_key_t fp_flow_cache_key;
static pthread_once_t fp_flow_cache_once = PTHREAD_ONCE_INIT;
static __thread fp_flow_cache_t *fp_flow_cache_mine __attribute__((tls_model("initial-exec")));

static void fp_flow_cache_destroy(void *p)
{
    free(((fp_flow_cache_t *)p)->entries);
    free(p);
}

static void fp_flow_cache_key_make(void) { (void)pthread_key_create(&fp_flow_cache_key, fp_flow_cache_destroy); }

/* NULL only when memory runs out; the caller then scans the table without a cache */
static inline fp_flow_cache_t *fp_flow_cache(size_t entries_bytes)
{
    fp_flow_cache_t *c = fp_flow_cache_mine;
    if (__builtin_expect(c != NULL, 1))
        return c;
    pthread_once(&fp_flow_cache_once, fp_flow_cache_key_make);
    c = (fp_flow_cache_t *)calloc(1, sizeof(*c));
    if (!c) return NULL;
    if (posix_memalign(&c->entries, 64, entries_bytes) != 0)
        c->entries = NULL;
    else
        memset(c->entries, 0, entries_bytes);
    if (!c->entries || getrandom(c->seed, sizeof(c->seed), 0) != (ssize_t)sizeof(c->seed)) {
        free(c->entries);
        free(c);
        return NULL;
    }
    for (int i = 0; i < 6; i++)
        c->seed[i] |= 1;
    pthread_setspecific(fp_flow_cache_key, c);
    fp_flow_cache_mine = c;
    return c;
}

#endif
