/* intel-ipsec-mb glue: a manager per thread, and setters for the job fields that sit in
 * anonymous unions (awkward to declare to Cython). No crypto here. */
#ifndef FASTPATH_IMB_GLUE_H
#define FASTPATH_IMB_GLUE_H

/* the header's old compatibility names (SHA1, DES, ...) clash with OpenSSL's */
#define NO_COMPAT_IMB_API_053
#include <intel-ipsec-mb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* A manager holds the job queue, so each thread needs its own; it lives as long as the
 * thread and is freed by the key's destructor. */
static pthread_key_t fp_mgr_key;
static pthread_once_t fp_mgr_once = PTHREAD_ONCE_INIT;
static IMB_ARCH fp_mgr_arch = IMB_ARCH_NONE;

static void fp_mgr_destroy(void *p) { free_mb_mgr((IMB_MGR *)p); }
static void fp_mgr_key_make(void) { (void)pthread_key_create(&fp_mgr_key, fp_mgr_destroy); }

static inline IMB_MGR *fp_mgr(void)
{
    static __thread IMB_MGR *mgr __attribute__((tls_model("initial-exec")));
    IMB_ARCH arch;
    if (mgr) return mgr;
    pthread_once(&fp_mgr_once, fp_mgr_key_make);
    mgr = alloc_mb_mgr(0);
    if (!mgr) return NULL;
    init_mb_mgr_auto(mgr, &arch);
    if (imb_get_errno(mgr)) { free_mb_mgr(mgr); mgr = NULL; return NULL; }
    fp_mgr_arch = arch;
    pthread_setspecific(fp_mgr_key, mgr);
    return mgr;
}

static inline int fp_mgr_arch_get(void) { return (int)fp_mgr_arch; }

static inline void fp_job_set_hmac(IMB_JOB *j, const uint8_t *ipad, const uint8_t *opad)
{
    j->u.HMAC._hashed_auth_key_xor_ipad = ipad;
    j->u.HMAC._hashed_auth_key_xor_opad = opad;
}

static inline void fp_job_set_region(IMB_JOB *j, const uint8_t *src, uint8_t *dst,
                                     uint64_t cipher_off, uint64_t cipher_len, uint64_t hash_len)
{
    j->src = src;
    j->dst = dst;
    j->cipher_start_src_offset_in_bytes = cipher_off;
    j->msg_len_to_cipher_in_bytes = cipher_len;
    j->hash_start_src_offset_in_bytes = 0;
    j->msg_len_to_hash_in_bytes = hash_len;
}

/* the direct GCM and ChaCha20-Poly1305 functions live in the manager's function table;
 * they are the same for every manager of one architecture, so an SA keeps the pointers */
static inline aes_gcm_enc_dec_t fp_gcm_enc_fn(IMB_MGR *m, int klen)
{ return klen == 16 ? m->gcm128_enc : klen == 24 ? m->gcm192_enc : m->gcm256_enc; }
static inline aes_gcm_enc_dec_t fp_gcm_dec_fn(IMB_MGR *m, int klen)
{ return klen == 16 ? m->gcm128_dec : klen == 24 ? m->gcm192_dec : m->gcm256_dec; }
static inline aes_gcm_pre_t fp_gcm_pre_fn(IMB_MGR *m, int klen)
{ return klen == 16 ? m->gcm128_pre : klen == 24 ? m->gcm192_pre : m->gcm256_pre; }
static inline keyexp_t fp_keyexp_fn(IMB_MGR *m, int klen)
{ return klen == 16 ? m->keyexp_128 : klen == 24 ? m->keyexp_192 : m->keyexp_256; }

/* Per-SA key material for the library, laid out with the alignment it requires. */
typedef struct fp_mb_sa fp_mb_sa;
/* one packet through an AEAD, sealing (enc) or opening; the SA's transform chooses it */
typedef void (*fp_aead_apply_t)(fp_mb_sa *m, const uint8_t *nonce, const uint8_t *aad, uint64_t na,
                                const uint8_t *src, uint8_t *dst, uint64_t n, uint8_t *tag,
                                uint64_t taglen, int enc);
struct fp_mb_sa {
    DECLARE_ALIGNED(struct gcm_key_data gcm, 64);
    DECLARE_ALIGNED(uint8_t enc_exp[16 * 15], 16);
    DECLARE_ALIGNED(uint8_t dec_exp[16 * 15], 16);
    DECLARE_ALIGNED(uint64_t des_ks[3 * 16], 16);   /* three DES key schedules */
    DECLARE_ALIGNED(uint8_t ipad[64], 16);
    DECLARE_ALIGNED(uint8_t opad[64], 16);
    DECLARE_ALIGNED(uint8_t chacha_key[32], 16);
    const void *des3_ks[3];
    aes_gcm_enc_dec_t gcm_enc;
    aes_gcm_enc_dec_t gcm_dec;
    chacha_poly_init_t cp_init;
    chacha_poly_enc_dec_update_t cp_enc;
    chacha_poly_enc_dec_update_t cp_dec;
    chacha_poly_finalize_t cp_final;
    IMB_CIPHER_MODE cipher_mode;
    IMB_HASH_ALG hash_alg;
    uint64_t key_len;
    const void *enc_keys;
    const void *dec_keys;
    fp_aead_apply_t aead_apply;
};

#endif
