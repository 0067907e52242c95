/* Unpredictable bytes (CBC IVs, RFC 3602 section 3; TFC padding lengths) from OpenSSL's DRBG,
 * drawn in bulk: RAND_bytes costs about a microsecond per call plus a few ns per 16 bytes,
 * so one 64 KiB draw per thread serves 4096 IVs. The pool is per thread (a batch runs on one
 * thread), allocated on first use, and every byte handed out is wiped from it. */
#ifndef FASTPATH_RAND_POOL_H
#define FASTPATH_RAND_POOL_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "compat.h"

#define FP_POOL_BYTES 65536u

typedef struct { uint32_t pos; uint8_t bytes[FP_POOL_BYTES]; } fp_pool_t;

static pthread_key_t fp_pool_key;
static pthread_once_t fp_pool_once = PTHREAD_ONCE_INIT;
/* initial-exec: one %fs-relative load, not a __tls_get_addr call per packet */
static __thread fp_pool_t *fp_pool_mine __attribute__((tls_model("initial-exec")));

static void fp_pool_destroy(void *p) { OPENSSL_cleanse(p, sizeof(fp_pool_t)); free(p); }

/* A forked child must not hand out the bytes its parent will: it starts with an empty pool
 * (only the forking thread exists in the child; OpenSSL reseeds its own DRBG on fork). */
static void fp_pool_after_fork(void)
{
    if (fp_pool_mine) {
        OPENSSL_cleanse(fp_pool_mine->bytes, FP_POOL_BYTES);
        fp_pool_mine->pos = FP_POOL_BYTES;
    }
}

static void fp_pool_key_make(void)
{
    (void)pthread_key_create(&fp_pool_key, fp_pool_destroy);
    (void)pthread_atfork(NULL, NULL, fp_pool_after_fork);
}

static inline int fp_random(uint8_t *out, uint32_t n)
{
    fp_pool_t *pool = fp_pool_mine;
    if (!pool) {
        pthread_once(&fp_pool_once, fp_pool_key_make);
        pool = (fp_pool_t *)malloc(sizeof(fp_pool_t));
        if (!pool) return -1;
        pool->pos = FP_POOL_BYTES;
        pthread_setspecific(fp_pool_key, pool);
        fp_pool_mine = pool;
    }
    if (pool->pos + n > FP_POOL_BYTES) {
        if (RAND_bytes(pool->bytes, (int)FP_POOL_BYTES) != 1) { ERR_clear_error(); return -1; }
        pool->pos = 0;
    }
    fp_copy_small(out, pool->bytes + pool->pos, n);
    fp_zero_small(pool->bytes + pool->pos, n);
    pool->pos += n;
    return 0;
}

#endif
