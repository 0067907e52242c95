"""The OpenSSL floor: the least work a C loop must do per packet for each transform, over the
same library calls the kernel makes (contexts reused, HMAC pads precomputed). Benchmarks
divide the kernel's cost by these, measured in the same run on the same machine.

Each function makes one pass over n regions of buf (region i: offsets[i], lengths[i] bytes
of cipher input, a fresh ESP-like header of 16 bytes in front of it for the ICV input) and
returns the elapsed nanoseconds. A region outside buf (or, for CBC, without its 16 bytes in
front) is a ValueError before anything runs.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset

from fastpath.sa cimport check_regions

from fastpath._include.compat cimport fp_now_ns as now_ns

from fastpath._include.openssl cimport *
from fastpath.crypto cimport *

cdef extern from "hmac_pads.h" nogil:
    void fp_hmac_sha1(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_sha1_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)
    void fp_hmac_sha256(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_sha256_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)



cdef const EVP_CIPHER *aead_cipher(str name) except NULL:
    if name == "aes-128-gcm":
        return EVP_aes_128_gcm()
    if name == "aes-256-gcm":
        return EVP_aes_256_gcm()
    if name == "chacha20-poly1305":
        return EVP_chacha20_poly1305()
    raise ValueError(f"no AEAD floor for {name!r}")


def openssl_aead(uint8_t[::1] buf, int64_t[::1] offsets, uint32_t[::1] lengths, str cipher="aes-128-gcm",
                 bint encrypt=True):
    """AES-GCM or ChaCha20-Poly1305 (RFC 4106 / 7634 shape: 12-byte nonce, 8-byte AAD,
    16-byte tag) with one reused EVP context: the loop the OpenSSL backend runs."""
    check_regions(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], offsets.shape[0],
                  &lengths[0], lengths.shape[0], 0)
    cdef const EVP_CIPHER *evp = aead_cipher(cipher)
    cdef EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new()
    cdef uint8_t key[32]
    cdef uint8_t nonce[12]
    cdef uint8_t aad[8]
    cdef uint8_t tag[16]
    cdef int outl
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef uint64_t t0, t1
    memset(key, 7, 32)
    memset(nonce, 1, 12)
    memset(aad, 2, 8)
    memset(tag, 0, 16)
    EVP_CipherInit_ex(ctx, evp, NULL, key, NULL, encrypt)
    with nogil:
        t0 = now_ns()
        for i in range(n):
            EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, -1)
            if not encrypt:
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag)
            EVP_CipherUpdate(ctx, NULL, &outl, aad, 8)
            EVP_CipherUpdate(ctx, &buf[offsets[i]], &outl, &buf[offsets[i]], lengths[i])
            EVP_CipherFinal_ex(ctx, tag, &outl)
            if encrypt:
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag)
        t1 = now_ns()
    ERR_clear_error()
    EVP_CIPHER_CTX_free(ctx)
    return t1 - t0


def openssl_cbc_hmac(uint8_t[::1] buf, int64_t[::1] offsets, uint32_t[::1] lengths, str cipher="aes-128-cbc",
                     str hmac="sha1", bint encrypt=True):
    """AES-CBC (or DES-CBC through DES_ncbc_encrypt) + HMAC-SHA1 or HMAC-SHA256 with
    precomputed pad states, over 16 bytes of header + the ciphertext: the OpenSSL backend's
    loop."""
    check_regions(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], offsets.shape[0],
                  &lengths[0], lengths.shape[0], 16)
    cdef EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new()
    cdef DES_key_schedule ks
    cdef DES_cblock ivec
    cdef hmac_ctx_t hin, hout
    cdef uint8_t key[32]
    cdef uint8_t iv[16]
    cdef uint8_t md[32]
    cdef int outl
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef uint64_t t0, t1
    cdef uint8_t *p
    cdef bint des = cipher == "des-cbc"
    cdef bint sha256 = hmac == "sha256"
    if cipher not in ("aes-128-cbc", "aes-256-cbc", "des-cbc") or hmac not in ("sha1", "sha256"):
        raise ValueError(f"no CBC floor for {cipher!r} with {hmac!r}")
    memset(key, 7, 32)
    memset(iv, 1, 16)
    if sha256:
        fp_hmac_sha256_pads(&hin, &hout, key, 32)
    else:
        fp_hmac_sha1_pads(&hin, &hout, key, 20)
    if des:
        DES_set_key_unchecked(<const DES_cblock *>key, &ks)
    else:
        EVP_CipherInit_ex(ctx, EVP_aes_128_cbc() if cipher == "aes-128-cbc" else EVP_aes_256_cbc(), NULL, key, NULL,
                          encrypt)
        EVP_CIPHER_CTX_set_padding(ctx, 0)
    with nogil:
        t0 = now_ns()
        for i in range(n):
            p = &buf[offsets[i]]
            if not encrypt:
                mac(sha256, &hin, &hout, p - 16, lengths[i] + 16, md)
            if des:
                memcpy_iv(ivec, iv)
                DES_ncbc_encrypt(p, p, lengths[i], &ks, &ivec, DES_ENCRYPT if encrypt else DES_DECRYPT)
            else:
                EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1)
                EVP_CipherUpdate(ctx, p, &outl, p, lengths[i])
            if encrypt:
                mac(sha256, &hin, &hout, p - 16, lengths[i] + 16, md)
        t1 = now_ns()
    EVP_CIPHER_CTX_free(ctx)
    return t1 - t0


cdef inline void mac(bint sha256, const hmac_ctx_t *hin, const hmac_ctx_t *hout, const uint8_t *d, size_t n,
                     uint8_t *md) noexcept nogil:
    if sha256:
        fp_hmac_sha256(hin, hout, d, n, NULL, 0, md)
    else:
        fp_hmac_sha1(hin, hout, d, n, NULL, 0, md)


cdef inline void memcpy_iv(DES_cblock dst, const uint8_t *src) noexcept nogil:
    cdef int k
    for k in range(8):
        dst[k] = src[k]
