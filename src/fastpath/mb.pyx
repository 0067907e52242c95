"""The intel-ipsec-mb batch backend (built only where the library is installed).

What it takes over, per SA, when the SA is made (AUTO) or when forced (IPSECMB):
  - AES-GCM: the library's direct calls, for single packets and batches alike (VAES: about a
    quarter of OpenSSL 3's cost per packet on this machine class)
  - ChaCha20-Poly1305: the direct calls, where the library has AVX-512
  - cipher + HMAC (AES-CBC, AES-CTR, 3DES, DES, NULL with HMAC-MD5/SHA1/SHA2): the job API
    for batches, many packets in flight across the SIMD lanes. Single packets stay on OpenSSL
    unless forced, because a job flushed alone is slower than OpenSSL.
AES-GMAC always stays on OpenSSL. DES and 3DES are taken only on the AVX-512 path; the
library's SSE/AVX2 DES is plain C and far slower than OpenSSL.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from fastpath._include.openssl cimport CRYPTO_memcmp, OPENSSL_cleanse
from fastpath._include.compat cimport fp_store_be32, fp_ctr_block16
from fastpath.crypto cimport *
from fastpath.status cimport Status
from fastpath.esp_out cimport CHUNK

from fastpath._include.ipsecmb cimport *


cdef inline fp_mb_sa *MB(crypto_t *c) noexcept nogil:
    return <fp_mb_sa *>c.mb


# ---------------------------------------------------------------------------------------
# AEAD (AES-GCM, ChaCha20-Poly1305): the library's direct calls, one packet at a time (they
# are single-buffer but vectorised inside; GCM is not multi-buffer in 1.3)

cdef void gcm_apply(fp_mb_sa *m, const uint8_t *nonce, const uint8_t *aad, uint64_t na,
                    const uint8_t *src, uint8_t *dst, uint64_t n, uint8_t *tag, uint64_t taglen,
                    int enc) noexcept nogil:
    cdef gcm_context_data ctx
    if enc:
        m.gcm_enc(&m.gcm, &ctx, dst, src, n, nonce, aad, na, tag, taglen)
    else:
        m.gcm_dec(&m.gcm, &ctx, dst, src, n, nonce, aad, na, tag, taglen)


cdef void chacha_apply(fp_mb_sa *m, const uint8_t *nonce, const uint8_t *aad, uint64_t na,
                       const uint8_t *src, uint8_t *dst, uint64_t n, uint8_t *tag, uint64_t taglen,
                       int enc) noexcept nogil:
    cdef chacha_ctx ctx
    m.cp_init(m.chacha_key, &ctx, nonce, aad, na)
    if enc:
        m.cp_enc(m.chacha_key, &ctx, dst, src, n)
    else:
        m.cp_dec(m.chacha_key, &ctx, dst, src, n)
    m.cp_final(&ctx, tag, taglen)


cdef void seal_aead(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef fp_mb_sa *m = MB(c)
    cdef uint8_t nonce[16]
    cdef uint8_t aadbuf[16]
    cdef const uint8_t *aad
    cdef uint32_t i, na
    for i in range(n):
        if ops[i].status != Status.OK:
            continue
        nonce_of(c, &ops[i], nonce)
        aad = aad_of(c, &ops[i], aadbuf, &na)
        m.aead_apply(m, nonce, aad, na, ops[i].src, ops[i].dst, ops[i].len, ops[i].icv, c.icv_len, 1)


cdef void open_aead(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef fp_mb_sa *m = MB(c)
    cdef uint8_t nonce[16]
    cdef uint8_t aadbuf[16]
    cdef const uint8_t *aad
    cdef uint8_t tag[16]
    cdef uint32_t i, na
    for i in range(n):
        if ops[i].status != Status.OK:
            continue
        nonce_of(c, &ops[i], nonce)
        aad = aad_of(c, &ops[i], aadbuf, &na)
        m.aead_apply(m, nonce, aad, na, ops[i].src, ops[i].dst, ops[i].len, tag, c.icv_len, 0)
        if CRYPTO_memcmp(tag, ops[i].icv, c.icv_len) != 0:
            ops[i].status = Status.ICV_FAIL
            if ops[i].src == ops[i].dst:
                # put a forged packet back as it came (the key stream is its own inverse)
                m.aead_apply(m, nonce, aad, na, ops[i].dst, ops[i].dst, ops[i].len, tag, c.icv_len, 1)


# ---------------------------------------------------------------------------------------
# Cipher + HMAC: the job API, every packet of the burst in flight at once

ctypedef struct job_scratch_t:
    uint8_t ctr[16]         # RFC 3686 counter block
    uint8_t tag[32]         # computed ICV (inbound)
    uint32_t icv_head       # first 4 received ICV bytes, kept while the ESN high half borrows them


cdef inline void job_fill(crypto_t *c, fp_mb_sa *m, IMB_JOB *j, crypto_op_t *op,
                          job_scratch_t *s, bint enc) noexcept nogil:
    cdef uint64_t coff = <uint64_t>(op.src - op.esp)
    cdef uint64_t hlen = coff + op.len + (4 if c.esn else 0)
    j.cipher_mode = m.cipher_mode
    j.cipher_direction = IMB_DIR_ENCRYPT if enc else IMB_DIR_DECRYPT
    j.chain_order = IMB_ORDER_CIPHER_HASH if enc else IMB_ORDER_HASH_CIPHER
    j.hash_alg = m.hash_alg
    j.enc_keys = m.enc_keys
    j.dec_keys = m.dec_keys
    j.key_len_in_bytes = m.key_len
    fp_job_set_region(j, op.esp, op.dst, coff, op.len, hlen)
    fp_job_set_hmac(j, m.ipad, m.opad)
    if m.cipher_mode == IMB_CIPHER_CNTR:
        fp_ctr_block16(s.ctr, c.salt, op.iv)
        j.iv = s.ctr
        j.iv_len_in_bytes = 16
    else:
        j.iv = op.iv
        j.iv_len_in_bytes = c.iv_len
    j.auth_tag_output_len_in_bytes = c.icv_len
    j.user_data = op
    if c.esn:
        # RFC 4303 2.2.1: the high half follows the payload in the ICV input; its bytes are
        # borrowed from where the ICV sits (DPDK's insert_sqh) and given back afterwards
        if not enc:
            memcpy(&s.icv_head, op.icv, 4)
        fp_store_be32(op.icv, <uint32_t>(op.seq >> 32))
    j.auth_tag_output = op.icv if enc else s.tag


cdef void jobs_run(crypto_t *c, crypto_op_t *ops, uint32_t n, bint enc) noexcept nogil:
    cdef IMB_MGR *mgr = fp_mgr()
    cdef fp_mb_sa *m = MB(c)
    cdef job_scratch_t scratch[CHUNK]
    cdef IMB_JOB *j
    cdef crypto_op_t *op
    cdef uint32_t i, base = 0, cnt, k
    if mgr == NULL:
        for i in range(n):
            if ops[i].status == Status.OK:
                ops[i].status = Status.INTERNAL
        return
    while base < n:
        cnt = n - base if n - base < CHUNK else CHUNK
        for k in range(cnt):
            op = &ops[base + k]
            if op.status != Status.OK:
                continue
            if c.esn and not enc and op.src != op.dst:
                # the ESN high half must follow the payload for the library's hash, and an
                # input opened out of place may be read-only: OpenSSL hashes it in two parts
                c.open_portable(c, op, 1)
                continue
            j = IMB_GET_NEXT_JOB(mgr)
            job_fill(c, m, j, op, &scratch[k], enc)
            j = IMB_SUBMIT_JOB(mgr)
            while j != NULL:
                job_done(c, j, scratch, ops + base, enc)
                j = IMB_GET_COMPLETED_JOB(mgr)
        j = IMB_FLUSH_JOB(mgr)
        while j != NULL:
            job_done(c, j, scratch, ops + base, enc)
            j = IMB_FLUSH_JOB(mgr)
        base += cnt


cdef inline bint m_cipher_is_null(crypto_t *c) noexcept nogil:
    return c.cipher == CIPHER_NULL


cdef inline void job_done(crypto_t *c, IMB_JOB *j, job_scratch_t *scratch, crypto_op_t *first,
                          bint enc) noexcept nogil:
    cdef crypto_op_t *op = <crypto_op_t *>j.user_data
    cdef job_scratch_t *s = &scratch[op - first]
    if j.status != IMB_STATUS_COMPLETED:
        op.status = Status.INTERNAL
        return
    if m_cipher_is_null(c) and op.src != op.dst:
        # the library's NULL cipher writes nothing: an out-of-place call copies it itself
        memcpy(op.dst, op.src, op.len)
    if enc:
        return
    if c.esn:
        memcpy(op.icv, &s.icv_head, 4)
    if CRYPTO_memcmp(s.tag, op.icv, c.icv_len) != 0:
        op.status = Status.ICV_FAIL
        # the job decrypted before the compare could refuse it: put the packet back as it
        # came (CBC and CTR encryption under the same IV undo the decryption exactly)
        if op.src == op.dst:
            c.cipher_op(c, op.iv, op.dst, op.dst, op.len, 1)


cdef void seal_jobs(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    jobs_run(c, ops, n, True)


cdef void open_jobs(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    jobs_run(c, ops, n, False)


# ---------------------------------------------------------------------------------------
# Setup

# the library's hash for each integrity id, and that hash's block size
cdef int HASH_ALG[6]
cdef size_t HASH_BLOCK[6]
HASH_ALG[:] = [IMB_AUTH_NULL, IMB_AUTH_MD5, IMB_AUTH_HMAC_SHA_1, IMB_AUTH_HMAC_SHA_256,
               IMB_AUTH_HMAC_SHA_384, IMB_AUTH_HMAC_SHA_512]
HASH_BLOCK[:] = [64, 64, 64, 64, 128, 128]


cdef void hmac_pad_state(IMB_MGR *mgr, int integ, const uint8_t *key, size_t klen, uint8_t x,
                         uint8_t *out) noexcept:
    # the library takes the digest state after one block of key ^ pad (RFC 2104 section 4)
    cdef uint8_t block[128]
    cdef size_t bs = HASH_BLOCK[integ], i
    memset(block, 0, bs)
    memcpy(block, key, klen)
    for i in range(bs):
        block[i] ^= x
    if integ == INTEG_HMAC_MD5_96:
        IMB_MD5_ONE_BLOCK(mgr, block, out)
    elif integ == INTEG_HMAC_SHA1_96:
        IMB_SHA1_ONE_BLOCK(mgr, block, out)
    elif integ == INTEG_HMAC_SHA256_128:
        IMB_SHA256_ONE_BLOCK(mgr, block, out)
    elif integ == INTEG_HMAC_SHA384_192:
        IMB_SHA384_ONE_BLOCK(mgr, block, out)
    else:
        IMB_SHA512_ONE_BLOCK(mgr, block, out)
    OPENSSL_cleanse(block, sizeof(block))


cdef int mb_setup(crypto_t *c, const uint8_t *key, size_t klen, const uint8_t *akey,
                  size_t aklen, bint required) except -1:
    cdef IMB_MGR *mgr = fp_mgr()
    if mgr == NULL:
        if required:
            raise ValueError("intel-ipsec-mb could not start a manager on this CPU")
        return 0
    cdef int arch = fp_mgr_arch_get()
    cdef int cipher = c.cipher
    cdef bint job_cipher = cipher in (CIPHER_AES_CBC, CIPHER_AES_CTR, CIPHER_NULL, CIPHER_DES_CBC, CIPHER_3DES_CBC)
    cdef bint des = cipher in (CIPHER_DES_CBC, CIPHER_3DES_CBC)
    if cipher == CIPHER_AES_GMAC:
        if required:
            raise ValueError("AES-GMAC is not offered by the intel-ipsec-mb backend; use openssl")
        return 0
    if not required:
        if cipher == CIPHER_CHACHA20_POLY1305 and arch < IMB_ARCH_AVX512:
            return 0
        if job_cipher and (arch < IMB_ARCH_AVX2 or (des and arch < IMB_ARCH_AVX512)):
            return 0

    cdef void *mem = NULL
    if posix_memalign(&mem, 64, sizeof(fp_mb_sa)) != 0:
        raise MemoryError()
    memset(mem, 0, sizeof(fp_mb_sa))
    cdef fp_mb_sa *m = <fp_mb_sa *>mem
    cdef int i
    c.mb = mem
    if cipher == CIPHER_AES_GCM:
        if klen == 16:
            IMB_AES128_GCM_PRE(mgr, key, &m.gcm)
        elif klen == 24:
            IMB_AES192_GCM_PRE(mgr, key, &m.gcm)
        else:
            IMB_AES256_GCM_PRE(mgr, key, &m.gcm)
        m.gcm_enc = fp_gcm_enc_fn(mgr, <int>klen)
        m.gcm_dec = fp_gcm_dec_fn(mgr, <int>klen)
        m.aead_apply = gcm_apply
        c.seal_one, c.open_one, c.seal_burst, c.open_burst = seal_aead, open_aead, seal_aead, open_aead
    elif cipher == CIPHER_CHACHA20_POLY1305:
        memcpy(m.chacha_key, key, 32)
        m.cp_init, m.cp_enc, m.cp_dec, m.cp_final = fp_cp_init, fp_cp_enc, fp_cp_dec, fp_cp_final
        m.aead_apply = chacha_apply
        c.seal_one, c.open_one, c.seal_burst, c.open_burst = seal_aead, open_aead, seal_aead, open_aead
    else:
        m.hash_alg = HASH_ALG[c.integ]
        hmac_pad_state(mgr, c.integ, akey, aklen, 0x36, m.ipad)
        hmac_pad_state(mgr, c.integ, akey, aklen, 0x5c, m.opad)
        if cipher == CIPHER_AES_CBC or cipher == CIPHER_AES_CTR:
            if klen == 16:
                IMB_AES_KEYEXP_128(mgr, key, m.enc_exp, m.dec_exp)
            elif klen == 24:
                IMB_AES_KEYEXP_192(mgr, key, m.enc_exp, m.dec_exp)
            else:
                IMB_AES_KEYEXP_256(mgr, key, m.enc_exp, m.dec_exp)
            m.cipher_mode = IMB_CIPHER_CBC if cipher == CIPHER_AES_CBC else IMB_CIPHER_CNTR
            m.key_len = klen
            m.enc_keys = <const void *>m.enc_exp
            # CTR runs the forward cipher in both directions (RFC 3686)
            if cipher == CIPHER_AES_CBC:
                m.dec_keys = <const void *>m.dec_exp
            else:
                m.dec_keys = <const void *>m.enc_exp
        elif cipher == CIPHER_DES_CBC:
            IMB_DES_KEYSCHED(mgr, &m.des_ks[0], key)
            m.cipher_mode = IMB_CIPHER_DES
            m.key_len = 8
            m.enc_keys = m.dec_keys = <const void *>&m.des_ks[0]
        elif cipher == CIPHER_3DES_CBC:
            for i in range(3):
                IMB_DES_KEYSCHED(mgr, &m.des_ks[16 * i], key + 8 * i)
                m.des3_ks[i] = <const void *>&m.des_ks[16 * i]
            m.cipher_mode = IMB_CIPHER_DES3
            m.key_len = 24
            m.enc_keys = m.dec_keys = <const void *>m.des3_ks
        else:
            m.cipher_mode = IMB_CIPHER_NULL
            m.key_len = 0
        c.seal_burst, c.open_burst = seal_jobs, open_jobs
        if required:
            c.seal_one, c.open_one = seal_jobs, open_jobs
    c.backend = BACKEND_IPSECMB
    return 0


cdef void mb_free(crypto_t *c) noexcept nogil:
    OPENSSL_cleanse(c.mb, sizeof(fp_mb_sa))
    free(c.mb)
    c.mb = NULL


_arch_names = {IMB_ARCH_NOAESNI: "no-aesni", IMB_ARCH_SSE: "sse", IMB_ARCH_AVX: "avx",
               IMB_ARCH_AVX2: "avx2", IMB_ARCH_AVX512: "avx512"}


def _register():
    if fp_mgr() == NULL:
        return
    arch = _arch_names.get(fp_mgr_arch_get(), "unknown")
    crypto_register_mb(mb_setup, mb_free, f"{imb_get_version_str().decode()} ({arch})")


_register()
