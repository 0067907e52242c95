"""The intel-ipsec-mb floor: minimal loops over the library calls the mb backend makes,
measured in the same run as the kernel (see floor.pyx for the conventions)."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport free
from libc.string cimport memset

from fastpath.sa cimport check_regions

from fastpath._include.compat cimport fp_now_ns as now_ns

from fastpath._include.ipsecmb cimport *


def ipsecmb_aead(uint8_t[::1] buf, int64_t[::1] offsets, uint32_t[::1] lengths, str cipher="aes-128-gcm",
                 bint encrypt=True):
    """AES-GCM (128 or 256) or ChaCha20-Poly1305 through the direct calls the mb backend
    makes, 8-byte AAD, 16-byte tag."""
    check_regions(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], offsets.shape[0],
                  &lengths[0], lengths.shape[0], 0)
    cdef IMB_MGR *m = fp_mgr()
    cdef void *mem
    cdef gcm_context_data ctx
    cdef chacha_ctx cctx
    cdef uint8_t key[32]
    cdef uint8_t nonce[12]
    cdef uint8_t aad[8]
    cdef uint8_t tag[16]
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef uint64_t t0, t1
    cdef int kind = {"aes-128-gcm": 0, "aes-256-gcm": 1, "chacha20-poly1305": 2}.get(cipher, -1)
    if kind < 0:
        raise ValueError(f"no AEAD floor for {cipher!r}")
    if m == NULL or posix_memalign(&mem, 64, sizeof(gcm_key_data)) != 0:
        raise MemoryError()
    memset(key, 7, 32)
    memset(nonce, 1, 12)
    memset(aad, 2, 8)
    cdef aes_gcm_enc_dec_t gcm = NULL
    if kind == 0:
        IMB_AES128_GCM_PRE(m, key, <gcm_key_data *>mem)
    elif kind == 1:
        IMB_AES256_GCM_PRE(m, key, <gcm_key_data *>mem)
    if kind < 2:
        # the function pointers the backend itself resolves once per SA
        gcm = fp_gcm_enc_fn(m, 16 if kind == 0 else 32) if encrypt else fp_gcm_dec_fn(m, 16 if kind == 0 else 32)
    with nogil:
        t0 = now_ns()
        for i in range(n):
            if kind == 2:
                fp_cp_init(key, &cctx, nonce, aad, 8)
                if encrypt:
                    fp_cp_enc(key, &cctx, &buf[offsets[i]], &buf[offsets[i]], lengths[i])
                else:
                    fp_cp_dec(key, &cctx, &buf[offsets[i]], &buf[offsets[i]], lengths[i])
                fp_cp_final(&cctx, tag, 16)
            else:
                gcm(<gcm_key_data *>mem, &ctx, &buf[offsets[i]], &buf[offsets[i]], lengths[i], nonce, aad, 8, tag, 16)
        t1 = now_ns()
    free(mem)
    return t1 - t0


def ipsecmb_cbc_hmac(uint8_t[::1] buf, int64_t[::1] offsets, uint32_t[::1] lengths, str cipher="aes-128-cbc",
                     str hmac="sha1", bint encrypt=True):
    """AES-CBC (128 or 256) or DES-CBC + HMAC-SHA1-96 or HMAC-SHA256-128 through the job API
    with every packet of the pass in flight, flushed once at the end: the most the library's
    lanes can be kept busy. The hash covers 16 bytes of header in front of each region, as
    ESP's does."""
    check_regions(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], offsets.shape[0],
                  &lengths[0], lengths.shape[0], 16)
    cdef IMB_MGR *m = fp_mgr()
    cdef void *mem
    cdef uint8_t *keys
    cdef uint8_t key[32]
    cdef uint8_t iv[16]
    cdef uint8_t block[64]
    cdef uint8_t tag[16]
    cdef IMB_JOB *j
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef uint64_t t0, t1
    cdef bint des = cipher == "des-cbc"
    cdef bint sha256 = hmac == "sha256"
    cdef uint64_t klen = 8 if des else 16 if cipher == "aes-128-cbc" else 32
    if cipher not in ("aes-128-cbc", "aes-256-cbc", "des-cbc") or hmac not in ("sha1", "sha256"):
        raise ValueError(f"no CBC floor for {cipher!r} with {hmac!r}")
    if m == NULL or posix_memalign(&mem, 64, 1024) != 0:
        raise MemoryError()
    keys = <uint8_t *>mem            # [0:240) enc, [256:496) dec or DES schedule, [512:) pads
    memset(key, 7, 32)
    memset(iv, 1, 16)
    if des:
        IMB_DES_KEYSCHED(m, <uint64_t *>keys, key)
    elif klen == 16:
        IMB_AES_KEYEXP_128(m, key, keys, keys + 256)
    else:
        IMB_AES_KEYEXP_256(m, key, keys, keys + 256)
    cdef int pad, at
    for pad, at in ((0x36, 512), (0x5c, 576)):
        memset(block, pad, 64)
        if sha256:
            IMB_SHA256_ONE_BLOCK(m, block, keys + at)
        else:
            IMB_SHA1_ONE_BLOCK(m, block, keys + at)
    with nogil:
        t0 = now_ns()
        for i in range(n):
            j = IMB_GET_NEXT_JOB(m)
            j.cipher_mode = IMB_CIPHER_DES if des else IMB_CIPHER_CBC
            j.cipher_direction = IMB_DIR_ENCRYPT if encrypt else IMB_DIR_DECRYPT
            j.chain_order = IMB_ORDER_CIPHER_HASH if encrypt else IMB_ORDER_HASH_CIPHER
            j.hash_alg = IMB_AUTH_HMAC_SHA_256 if sha256 else IMB_AUTH_HMAC_SHA_1
            j.enc_keys = keys
            j.dec_keys = keys if des else keys + 256
            j.key_len_in_bytes = klen
            fp_job_set_region(j, &buf[offsets[i]] - 16, &buf[offsets[i]], 16, lengths[i], lengths[i] + 16)
            fp_job_set_hmac(j, keys + 512, keys + 576)
            j.iv = iv
            j.iv_len_in_bytes = 8 if des else 16
            j.auth_tag_output = tag
            j.auth_tag_output_len_in_bytes = 16 if sha256 else 12
            IMB_SUBMIT_JOB(m)
        while IMB_FLUSH_JOB(m) != NULL:
            pass
        t1 = now_ns()
    free(mem)
    return t1 - t0
