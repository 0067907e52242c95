"""Transform backends: OpenSSL libcrypto for every transform, intel-ipsec-mb for batches.

Which functions an SA uses is decided once in :func:`crypto_init`; see crypto.pxd.
"""

from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy, memset

from fastpath._include.openssl cimport *
from fastpath._include.compat cimport fp_store_be32, fp_copy_small, fp_ctr_block16
from fastpath.status cimport Status

cdef extern from "hmac_pads.h" nogil:
    void fp_hmac_md5(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_sha1(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_sha256(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_sha384(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_sha512(const hmac_ctx_t *, const hmac_ctx_t *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *)
    void fp_hmac_md5_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)
    void fp_hmac_sha1_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)
    void fp_hmac_sha256_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)
    void fp_hmac_sha384_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)
    void fp_hmac_sha512_pads(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t)

ctypedef void (*pads_fn)(hmac_ctx_t *, hmac_ctx_t *, const uint8_t *, size_t) noexcept nogil

# (hmac, pads, digest length, RFC ICV length) per integrity algorithm
cdef hmac_fn HMAC_FN[6]
cdef pads_fn PADS_FN[6]
cdef uint8_t DIGEST_LEN[6]
cdef uint8_t INTEG_ICV_LEN[6]
HMAC_FN[:] = [NULL, <hmac_fn>fp_hmac_md5, <hmac_fn>fp_hmac_sha1, <hmac_fn>fp_hmac_sha256,
              <hmac_fn>fp_hmac_sha384, <hmac_fn>fp_hmac_sha512]
PADS_FN[:] = [NULL, <pads_fn>fp_hmac_md5_pads, <pads_fn>fp_hmac_sha1_pads, <pads_fn>fp_hmac_sha256_pads,
              <pads_fn>fp_hmac_sha384_pads, <pads_fn>fp_hmac_sha512_pads]
DIGEST_LEN[:] = [0, 16, 20, 32, 48, 64]
INTEG_ICV_LEN[:] = [0, 12, 12, 16, 24, 32]    # RFC 2403, 2404, 4868 truncations


# ---------------------------------------------------------------------------------------
# Per-packet building blocks

cdef inline void esn_high(const crypto_t *c, const crypto_op_t *op, uint8_t *hi, size_t *n) noexcept nogil:
    # RFC 4303 2.2.1 / 3.3.2.1: the high half is covered by the ICV but never sent
    if c.esn:
        fp_store_be32(hi, <uint32_t>(op.seq >> 32))
        n[0] = 4
    else:
        n[0] = 0


cdef int cipher_null(crypto_t *c, const uint8_t *iv, const uint8_t *src, uint8_t *dst,
                     uint32_t n, int enc) noexcept nogil:
    if src != dst:
        memcpy(dst, src, n)
    return 0


cdef int cipher_evp_cbc(crypto_t *c, const uint8_t *iv, const uint8_t *src, uint8_t *dst,
                        uint32_t n, int enc) noexcept nogil:
    cdef EVP_CIPHER_CTX *ctx = c.ectx if enc else c.dctx
    cdef int outl
    if EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) != 1:
        return -1
    if EVP_CipherUpdate(ctx, dst, &outl, src, <int>n) != 1:
        return -1
    return 0


cdef int cipher_evp_ctr(crypto_t *c, const uint8_t *iv, const uint8_t *src, uint8_t *dst,
                        uint32_t n, int enc) noexcept nogil:
    # RFC 3686 section 4: counter block = nonce || IV || 32-bit block counter starting at 1
    cdef uint8_t block[16]
    cdef int outl
    fp_ctr_block16(block, c.salt, iv)
    if EVP_CipherInit_ex(c.ectx, NULL, NULL, NULL, block, -1) != 1:
        return -1
    if EVP_CipherUpdate(c.ectx, dst, &outl, src, <int>n) != 1:
        return -1
    return 0


cdef int cipher_des_cbc(crypto_t *c, const uint8_t *iv, const uint8_t *src, uint8_t *dst,
                        uint32_t n, int enc) noexcept nogil:
    cdef DES_cblock ivec
    memcpy(ivec, iv, 8)
    DES_ncbc_encrypt(src, dst, n, &c.des_ks, &ivec, DES_ENCRYPT if enc else DES_DECRYPT)
    return 0


# ---------------------------------------------------------------------------------------
# Cipher + HMAC transforms (OpenSSL). Integrity is verified before anything is decrypted
# (RFC 4303 3.4.4.1: the cheap check first, which is also what the swIPe design chose).

cdef void seal_encauth(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef uint32_t i
    cdef crypto_op_t *op
    cdef uint8_t md[64]
    cdef uint8_t hi[4]
    cdef size_t nhi
    for i in range(n):
        op = &ops[i]
        if op.status != Status.OK:
            continue
        if c.cipher_op(c, op.iv, op.src, op.dst, op.len, 1) != 0:
            op.status = Status.INTERNAL
            continue
        esn_high(c, op, hi, &nhi)
        c.hmac(&c.hin, &c.hout, op.esp, <size_t>(op.dst + op.len - op.esp), hi, nhi, md)
        fp_copy_small(op.icv, md, c.icv_len)


cdef void open_encauth(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef uint32_t i
    cdef crypto_op_t *op
    cdef uint8_t md[64]
    cdef uint8_t hi[4]
    cdef size_t nhi
    for i in range(n):
        op = &ops[i]
        if op.status != Status.OK:
            continue
        esn_high(c, op, hi, &nhi)
        c.hmac(&c.hin, &c.hout, op.esp, <size_t>(op.src + op.len - op.esp), hi, nhi, md)
        if CRYPTO_memcmp(md, op.icv, c.icv_len) != 0:
            op.status = Status.ICV_FAIL
            continue
        if c.cipher_op(c, op.iv, op.src, op.dst, op.len, 0) != 0:
            op.status = Status.INTERNAL


cdef void open_encauth_noverify(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if ops[i].status == Status.OK and c.cipher_op(c, ops[i].iv, ops[i].src, ops[i].dst, ops[i].len, 0) != 0:
            ops[i].status = Status.INTERNAL


# ---------------------------------------------------------------------------------------
# AEAD transforms through EVP (AES-GCM, ChaCha20-Poly1305) and GMAC

cdef int aead_evp_apply(crypto_t *c, EVP_CIPHER_CTX *ctx, const crypto_op_t *op,
                        const uint8_t *src, uint8_t *dst, uint8_t *tag) noexcept nogil:
    """Run one packet through an AEAD context up to (not including) Final. The context's
    direction was fixed when the SA was made (-1 keeps it: no re-initialisation per packet).
    tag, when given, is the ICV to verify (decryption)."""
    cdef uint8_t nonce[16]
    cdef uint8_t aadbuf[16]
    cdef const uint8_t *aad
    cdef uint32_t naad
    cdef int outl
    aad = aad_of(c, op, aadbuf, &naad)
    nonce_of(c, op, nonce)
    if EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, -1) != 1:
        return -1
    if tag != NULL and EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, c.icv_len, tag) != 1:
        return -1
    if EVP_CipherUpdate(ctx, NULL, &outl, aad, <int>naad) != 1:
        return -1
    if c.cipher == CIPHER_AES_GMAC:
        # RFC 4543 section 3.3: everything after the ESP header, IV included, is AAD
        if op.iv != NULL and EVP_CipherUpdate(ctx, NULL, &outl, op.iv, 8) != 1:
            return -1
        if op.len and EVP_CipherUpdate(ctx, NULL, &outl, src, <int>op.len) != 1:
            return -1
        if src != dst:
            memcpy(dst, src, op.len)
    elif op.len and EVP_CipherUpdate(ctx, dst, &outl, src, <int>op.len) != 1:
        return -1
    return 0


cdef void seal_aead_evp(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef uint32_t i
    cdef crypto_op_t *op
    cdef uint8_t tail[16]
    cdef int outl
    for i in range(n):
        op = &ops[i]
        if op.status != Status.OK:
            continue
        if (aead_evp_apply(c, c.ectx, op, op.src, op.dst, NULL) != 0
                or EVP_CipherFinal_ex(c.ectx, tail, &outl) != 1
                or EVP_CIPHER_CTX_ctrl(c.ectx, EVP_CTRL_AEAD_GET_TAG, c.icv_len, op.icv) != 1):
            op.status = Status.INTERNAL
            ERR_clear_error()


cdef void open_aead_evp(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    cdef uint32_t i
    cdef crypto_op_t *op
    cdef uint8_t tag[16]
    cdef uint8_t tail[16]
    cdef int outl
    for i in range(n):
        op = &ops[i]
        if op.status != Status.OK:
            continue
        fp_copy_small(tag, op.icv, c.icv_len)
        if aead_evp_apply(c, c.dctx, op, op.src, op.dst, tag) != 0:
            op.status = Status.INTERNAL
            ERR_clear_error()
            continue
        if EVP_CipherFinal_ex(c.dctx, tail, &outl) != 1:
            op.status = Status.ICV_FAIL
            ERR_clear_error()
            if op.src == op.dst and c.cipher != CIPHER_AES_GMAC:
                # a forged packet decrypted in place is put back as it came: the key
                # stream is its own inverse, so sealing again restores the ciphertext
                aead_evp_apply(c, c.ectx, op, op.dst, op.dst, NULL)
                EVP_CipherFinal_ex(c.ectx, tail, &outl)
                ERR_clear_error()


cdef void open_aead_noverify(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil:
    # the tag is never checked: what tcpdump -E and Wireshark do when only the key is known
    cdef uint32_t i
    for i in range(n):
        if ops[i].status != Status.OK:
            continue
        if aead_evp_apply(c, c.dctx, &ops[i], ops[i].src, ops[i].dst, NULL) != 0:
            ops[i].status = Status.INTERNAL
            ERR_clear_error()


# ---------------------------------------------------------------------------------------
# Setup and teardown

cdef const EVP_CIPHER *evp_cipher(int cipher, int key_len) noexcept:
    if cipher == CIPHER_AES_CBC:
        return EVP_aes_128_cbc() if key_len == 16 else EVP_aes_192_cbc() if key_len == 24 else EVP_aes_256_cbc()
    if cipher == CIPHER_AES_CTR:
        return EVP_aes_128_ctr() if key_len == 16 else EVP_aes_192_ctr() if key_len == 24 else EVP_aes_256_ctr()
    if cipher == CIPHER_AES_GCM or cipher == CIPHER_AES_GMAC:
        return EVP_aes_128_gcm() if key_len == 16 else EVP_aes_192_gcm() if key_len == 24 else EVP_aes_256_gcm()
    if cipher == CIPHER_CHACHA20_POLY1305:
        return EVP_chacha20_poly1305()
    if cipher == CIPHER_3DES_CBC:
        return EVP_des_ede3_cbc()
    return NULL


cdef mb_setup_fn _mb_setup = NULL
cdef mb_free_fn _mb_free = NULL
cdef str _mb_arch = None


cdef void crypto_register_mb(mb_setup_fn setup, mb_free_fn release, str arch) noexcept:
    global _mb_setup, _mb_free, _mb_arch
    _mb_setup, _mb_free, _mb_arch = setup, release, arch


def backends() -> dict:
    """Available backends: ``{"openssl": version, "ipsecmb": "version (arch)"}``."""
    out = {"openssl": openssl_version()}
    if _mb_setup != NULL:
        out["ipsecmb"] = _mb_arch
    return out


cdef dict CIPHER_KEY_LENGTHS = {
    CIPHER_NULL: (0,),
    CIPHER_DES_CBC: (8,),
    CIPHER_3DES_CBC: (24,),
    CIPHER_AES_CBC: (16, 24, 32),
    CIPHER_AES_CTR: (16, 24, 32),
    CIPHER_AES_GCM: (16, 24, 32),
    CIPHER_AES_GMAC: (16, 24, 32),
    CIPHER_CHACHA20_POLY1305: (32,),
}

# ciphers whose key material ends with a 4-byte salt or nonce
cdef tuple SALTED = (CIPHER_AES_CTR, CIPHER_AES_GCM, CIPHER_AES_GMAC, CIPHER_CHACHA20_POLY1305)
cdef tuple AEAD = (CIPHER_AES_GCM, CIPHER_AES_GMAC, CIPHER_CHACHA20_POLY1305)


cdef int crypto_init(crypto_t *c, int cipher, int integ, int icv_len, const uint8_t[::1] enc_key,
                     const uint8_t[::1] auth_key, int backend, bint esn, bint implicit_iv) except -1:
    """Make the per-SA crypto state. Raises ValueError naming the bad parameter and leaves
    *c* empty (safe for crypto_free) on any failure."""
    memset(c, 0, sizeof(crypto_t))
    try:
        _crypto_setup(c, cipher, integ, icv_len, enc_key, auth_key, backend, esn, implicit_iv)
    except BaseException:
        crypto_free(c)
        raise
    return 0


cdef _crypto_setup(crypto_t *c, int cipher, int integ, int icv_len, const uint8_t[::1] enc_key,
                   const uint8_t[::1] auth_key, int backend, bint esn, bint implicit_iv):
    if cipher not in CIPHER_KEY_LENGTHS:
        raise ValueError(f"unknown cipher id {cipher}")
    if not 0 <= integ <= INTEG_HMAC_SHA512_256:
        raise ValueError(f"unknown integrity id {integ}")
    cdef bint aead = cipher in AEAD
    cdef size_t klen = enc_key.shape[0] - (4 if cipher in SALTED else 0)
    if cipher in SALTED and enc_key.shape[0] < 4:
        raise ValueError(f"{Cipher(cipher).name} key material needs a 4-byte salt at its end")
    if klen not in CIPHER_KEY_LENGTHS[cipher]:
        want = " or ".join(str(k + (4 if cipher in SALTED else 0)) for k in CIPHER_KEY_LENGTHS[cipher])
        raise ValueError(f"{Cipher(cipher).name} key material must be {want} bytes, got {enc_key.shape[0]}")
    if aead and integ != INTEG_NONE:
        raise ValueError(f"{Cipher(cipher).name} is an AEAD transform and takes no integrity algorithm")
    if not aead and integ == INTEG_NONE:
        raise ValueError(f"{Cipher(cipher).name} needs an integrity algorithm (ESP without integrity is refused)")
    if implicit_iv and cipher not in (CIPHER_AES_GCM, CIPHER_CHACHA20_POLY1305):
        raise ValueError("an implicit IV (RFC 8750) is defined only for AES-GCM and ChaCha20-Poly1305")

    c.cipher = cipher
    c.integ = integ
    c.aead = aead
    c.esn = esn
    c.implicit_iv = implicit_iv
    c.key_len = <uint8_t>klen
    if cipher in SALTED:
        memcpy(c.salt, &enc_key[klen], 4)

    if aead:
        if cipher == CIPHER_CHACHA20_POLY1305:
            if icv_len != 16:
                raise ValueError("chacha20poly1305 has a 16-byte ICV (RFC 7634)")
        elif cipher == CIPHER_AES_GMAC:
            if icv_len != 16:
                raise ValueError("AES-GMAC has a 16-byte ICV (RFC 4543)")
        elif icv_len not in (8, 12, 16):
            raise ValueError(f"AES-GCM ICV must be 8, 12 or 16 bytes, got {icv_len}")
        c.icv_len = icv_len
        c.iv_len = 0 if implicit_iv else 8
        c.block = 4       # stream modes: only the 4-byte trailer alignment (RFC 4303 2.4)
    else:
        c.icv_len = INTEG_ICV_LEN[integ]
        if icv_len and icv_len != c.icv_len:
            raise ValueError(f"{Integ(integ).name} has a {c.icv_len}-byte ICV, got {icv_len}")
        c.digest_len = DIGEST_LEN[integ]
        c.hmac = HMAC_FN[integ]
        if auth_key.shape[0] != c.digest_len:
            # RFC 2403/2404/4868: the key is as long as the digest
            raise ValueError(f"{Integ(integ).name} key must be {c.digest_len} bytes, got {auth_key.shape[0]}")
        PADS_FN[integ](&c.hin, &c.hout, &auth_key[0], auth_key.shape[0])
        if cipher == CIPHER_NULL:
            c.iv_len, c.block, c.cipher_op = 0, 4, cipher_null
        elif cipher == CIPHER_AES_CTR:
            c.iv_len, c.block, c.cipher_op = 8, 4, cipher_evp_ctr
        elif cipher == CIPHER_DES_CBC:
            c.iv_len, c.block, c.cipher_op = 8, 8, cipher_des_cbc
            DES_set_key_unchecked(<const DES_cblock *>&enc_key[0], &c.des_ks)
        else:
            c.iv_len = c.block = 8 if cipher == CIPHER_3DES_CBC else 16
            c.cipher_op = cipher_evp_cbc

    cdef const EVP_CIPHER *evp = evp_cipher(cipher, klen)
    if evp != NULL:
        c.ectx = EVP_CIPHER_CTX_new()
        c.dctx = EVP_CIPHER_CTX_new()
        if c.ectx == NULL or c.dctx == NULL:
            raise MemoryError()
        if (EVP_CipherInit_ex(c.ectx, evp, NULL, &enc_key[0], NULL, 1) != 1
                or EVP_CipherInit_ex(c.dctx, evp, NULL, &enc_key[0], NULL, 0) != 1):
            ERR_clear_error()
            raise ValueError(f"OpenSSL refused the {Cipher(cipher).name} key")
        if cipher == CIPHER_AES_CBC or cipher == CIPHER_3DES_CBC:
            # ESP pads for itself (RFC 4303 2.4). Only block modes need telling: OpenSSL 3
            # re-applies a padding setting on every per-packet re-initialisation, through
            # its parameter lookup, which costs stream modes tens of ns a packet for nothing
            EVP_CIPHER_CTX_set_padding(c.ectx, 0)
            EVP_CIPHER_CTX_set_padding(c.dctx, 0)

    if aead:
        c.seal_one, c.open_one, c.open_noverify = seal_aead_evp, open_aead_evp, open_aead_noverify
    else:
        c.seal_one, c.open_one, c.open_noverify = seal_encauth, open_encauth, open_encauth_noverify
    c.seal_burst, c.open_burst = c.seal_one, c.open_one
    c.open_portable = c.open_one
    c.backend = BACKEND_OPENSSL
    if backend == BACKEND_IPSECMB and _mb_setup == NULL:
        raise ValueError("the intel-ipsec-mb backend is not available in this build")
    if backend != BACKEND_OPENSSL and _mb_setup != NULL:
        _mb_setup(c, &enc_key[0] if enc_key.shape[0] else NULL, klen,
                  &auth_key[0] if auth_key.shape[0] else NULL, auth_key.shape[0],
                  backend == BACKEND_IPSECMB)


cdef void crypto_free(crypto_t *c) noexcept nogil:
    # keys die with the SA: every schedule and pad state is wiped, not just released
    if c.mb != NULL and _mb_free != NULL:
        _mb_free(c)
    if c.ectx != NULL:
        EVP_CIPHER_CTX_free(c.ectx)
    if c.dctx != NULL:
        EVP_CIPHER_CTX_free(c.dctx)
    OPENSSL_cleanse(c, sizeof(crypto_t))


# ---------------------------------------------------------------------------------------
# Python-visible helpers (tests and diagnostics)

def hmac_digest(int integ, const uint8_t[::1] key, const uint8_t[::1] data) -> bytes:
    """The full, untruncated HMAC of *data* through the kernel's precomputed-pad path."""
    cdef hmac_ctx_t hin, hout
    cdef uint8_t md[64]
    if not INTEG_HMAC_MD5_96 <= integ <= INTEG_HMAC_SHA512_256:
        raise ValueError(f"unknown integrity id {integ}")
    PADS_FN[integ](&hin, &hout, &key[0] if key.shape[0] else NULL, key.shape[0])
    HMAC_FN[integ](&hin, &hout, &data[0] if data.shape[0] else NULL, data.shape[0], NULL, 0, md)
    OPENSSL_cleanse(&hin, sizeof(hin))
    OPENSSL_cleanse(&hout, sizeof(hout))
    return md[:DIGEST_LEN[integ]]


def openssl_version() -> str:
    """The OpenSSL library version loaded at run time."""
    return OpenSSL_version(OPENSSL_VERSION).decode()


def openssl_build_version() -> str:
    """The OpenSSL headers the kernel was compiled against."""
    return OPENSSL_VERSION_TEXT.decode()
