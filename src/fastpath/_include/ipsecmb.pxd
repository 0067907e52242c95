# intel-ipsec-mb declarations (through imb_glue.h), shared by the backend (mb.pyx) and its
# floor (mb_floor.pyx). Declarations only, no logic.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "imb_glue.h" nogil:
    ctypedef struct IMB_MGR:
        pass
    ctypedef struct gcm_context_data "struct gcm_context_data":
        pass
    ctypedef struct chacha_ctx "struct chacha20_poly1305_context_data":
        pass
    ctypedef struct gcm_key_data "struct gcm_key_data":
        pass
    ctypedef int IMB_STATUS
    ctypedef int IMB_CIPHER_MODE
    ctypedef int IMB_HASH_ALG
    ctypedef struct IMB_JOB:
        const void *enc_keys
        const void *dec_keys
        uint64_t key_len_in_bytes
        const uint8_t *iv
        uint64_t iv_len_in_bytes
        uint8_t *auth_tag_output
        uint64_t auth_tag_output_len_in_bytes
        IMB_STATUS status
        IMB_CIPHER_MODE cipher_mode
        int cipher_direction
        IMB_HASH_ALG hash_alg
        int chain_order
        void *user_data
    ctypedef void (*aes_gcm_enc_dec_t)(const gcm_key_data *, gcm_context_data *, uint8_t *,
                                       const uint8_t *, uint64_t, const uint8_t *, const uint8_t *,
                                       uint64_t, uint8_t *, uint64_t)
    ctypedef void (*chacha_poly_init_t)(const void *, chacha_ctx *, const void *, const void *, uint64_t)
    ctypedef void (*chacha_poly_enc_dec_update_t)(const void *, chacha_ctx *, void *, const void *, uint64_t)
    ctypedef void (*chacha_poly_finalize_t)(chacha_ctx *, void *, uint64_t)
    ctypedef void (*fp_aead_apply_t)(fp_mb_sa *m, const uint8_t *nonce, const uint8_t *aad, uint64_t na,
                                     const uint8_t *src, uint8_t *dst, uint64_t n, uint8_t *tag,
                                     uint64_t taglen, int enc)
    ctypedef struct fp_mb_sa:
        fp_aead_apply_t aead_apply
        gcm_key_data gcm
        uint8_t enc_exp[240]
        uint8_t dec_exp[240]
        uint64_t des_ks[48]
        uint8_t ipad[64]
        uint8_t opad[64]
        uint8_t chacha_key[32]
        const void *des3_ks[3]
        aes_gcm_enc_dec_t gcm_enc
        aes_gcm_enc_dec_t gcm_dec
        chacha_poly_init_t cp_init
        chacha_poly_enc_dec_update_t cp_enc
        chacha_poly_enc_dec_update_t cp_dec
        chacha_poly_finalize_t cp_final
        IMB_CIPHER_MODE cipher_mode
        IMB_HASH_ALG hash_alg
        uint64_t key_len
        const void *enc_keys
        const void *dec_keys

    enum:
        IMB_ARCH_NONE, IMB_ARCH_NOAESNI, IMB_ARCH_SSE, IMB_ARCH_AVX, IMB_ARCH_AVX2, IMB_ARCH_AVX512
        IMB_CIPHER_CBC, IMB_CIPHER_CNTR, IMB_CIPHER_NULL, IMB_CIPHER_DES, IMB_CIPHER_DES3
        IMB_DIR_ENCRYPT, IMB_DIR_DECRYPT
        IMB_AUTH_HMAC_SHA_1, IMB_AUTH_HMAC_SHA_256, IMB_AUTH_HMAC_SHA_384, IMB_AUTH_HMAC_SHA_512
        IMB_AUTH_MD5, IMB_AUTH_NULL
        IMB_ORDER_CIPHER_HASH, IMB_ORDER_HASH_CIPHER
        IMB_STATUS_COMPLETED

    const char *imb_get_version_str()
    IMB_MGR *fp_mgr()
    int fp_mgr_arch_get()
    void fp_job_set_hmac(IMB_JOB *j, const uint8_t *ipad, const uint8_t *opad)
    void fp_job_set_region(IMB_JOB *j, const uint8_t *src, uint8_t *dst, uint64_t cipher_off,
                           uint64_t cipher_len, uint64_t hash_len)
    aes_gcm_enc_dec_t fp_gcm_enc_fn(IMB_MGR *m, int klen)
    aes_gcm_enc_dec_t fp_gcm_dec_fn(IMB_MGR *m, int klen)
    void IMB_AES128_GCM_PRE(IMB_MGR *m, const void *key, gcm_key_data *kd)
    void IMB_AES128_GCM_ENC(IMB_MGR *m, const gcm_key_data *kd, gcm_context_data *ctx, uint8_t *dst,
                            const uint8_t *src, uint64_t n, const uint8_t *iv, const uint8_t *aad,
                            uint64_t aadl, uint8_t *tag, uint64_t tagl)
    void IMB_AES128_GCM_DEC(IMB_MGR *m, const gcm_key_data *kd, gcm_context_data *ctx, uint8_t *dst,
                            const uint8_t *src, uint64_t n, const uint8_t *iv, const uint8_t *aad,
                            uint64_t aadl, uint8_t *tag, uint64_t tagl)
    void IMB_AES192_GCM_PRE(IMB_MGR *m, const void *key, gcm_key_data *kd)
    void IMB_AES256_GCM_PRE(IMB_MGR *m, const void *key, gcm_key_data *kd)
    void IMB_AES_KEYEXP_128(IMB_MGR *m, const void *key, void *enc, void *dec)
    void IMB_AES_KEYEXP_192(IMB_MGR *m, const void *key, void *enc, void *dec)
    void IMB_AES_KEYEXP_256(IMB_MGR *m, const void *key, void *enc, void *dec)
    int IMB_DES_KEYSCHED(IMB_MGR *m, uint64_t *ks, const void *key)
    void IMB_SHA1_ONE_BLOCK(IMB_MGR *m, const void *src, void *tag)
    void IMB_SHA256_ONE_BLOCK(IMB_MGR *m, const void *src, void *tag)
    void IMB_SHA384_ONE_BLOCK(IMB_MGR *m, const void *src, void *tag)
    void IMB_SHA512_ONE_BLOCK(IMB_MGR *m, const void *src, void *tag)
    void IMB_MD5_ONE_BLOCK(IMB_MGR *m, const void *src, void *tag)
    IMB_JOB *IMB_GET_NEXT_JOB(IMB_MGR *m)
    IMB_JOB *IMB_SUBMIT_JOB(IMB_MGR *m)
    IMB_JOB *IMB_GET_COMPLETED_JOB(IMB_MGR *m)
    IMB_JOB *IMB_FLUSH_JOB(IMB_MGR *m)
    chacha_poly_init_t fp_cp_init "fp_mgr()->chacha20_poly1305_init"
    chacha_poly_enc_dec_update_t fp_cp_enc "fp_mgr()->chacha20_poly1305_enc_update"
    chacha_poly_enc_dec_update_t fp_cp_dec "fp_mgr()->chacha20_poly1305_dec_update"
    chacha_poly_finalize_t fp_cp_final "fp_mgr()->chacha20_poly1305_finalize"
