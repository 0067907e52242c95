# Transform backends. Everything a packet needs from a transform is decided when the SA
# is made: key schedules, precomputed HMAC pad states, and the function pointers below.
# The per-packet loops call through those pointers and never test an algorithm name.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from fastpath._include.openssl cimport EVP_CIPHER_CTX, DES_key_schedule
from fastpath._include.compat cimport fp_nonce16, fp_esn_aad16

cdef extern from "hmac_pads.h" nogil:
    ctypedef struct hmac_ctx_t "fp_hmac_ctx":
        pass

cpdef enum Cipher:
    CIPHER_NULL = 0             # RFC 2410
    CIPHER_DES_CBC = 1          # RFC 2405 (legacy: the 1993 working group's cipher)
    CIPHER_3DES_CBC = 2         # RFC 2451
    CIPHER_AES_CBC = 3          # RFC 3602
    CIPHER_AES_CTR = 4          # RFC 3686
    CIPHER_AES_GCM = 5          # RFC 4106
    CIPHER_AES_GMAC = 6         # RFC 4543 (integrity only)
    CIPHER_CHACHA20_POLY1305 = 7  # RFC 7634

cpdef enum Integ:
    INTEG_NONE = 0              # AEAD transforms carry their own ICV
    INTEG_HMAC_MD5_96 = 1       # RFC 2403
    INTEG_HMAC_SHA1_96 = 2      # RFC 2404
    INTEG_HMAC_SHA256_128 = 3   # RFC 4868
    INTEG_HMAC_SHA384_192 = 4   # RFC 4868
    INTEG_HMAC_SHA512_256 = 5   # RFC 4868

cpdef enum Backend:
    BACKEND_AUTO = 0            # intel-ipsec-mb where it is faster, else OpenSSL
    BACKEND_OPENSSL = 1
    BACKEND_IPSECMB = 2

# One packet's view for the crypto step. The ESP header (SPI, sequence number) is at esp;
# the integrity-covered bytes of a non-AEAD transform are [esp, src + len) followed by the
# ESN high half when ESN is on (RFC 4303 2.2.1). Encapsulation is in place (src == dst).
ctypedef struct crypto_op_t:
    uint8_t *esp
    uint8_t *iv         # explicit IV in the packet; NULL with an implicit IV (RFC 8750)
    uint8_t *src        # cipher region: payload, TFC padding, padding, pad length, next header
    uint8_t *dst
    uint32_t len
    uint8_t *icv
    uint64_t seq        # the full sequence number (64 bits with ESN)
    uint8_t status

ctypedef struct crypto_t

# Process n ops; ops whose status is not OK on entry are skipped, failures are written to
# op.status. A burst function never raises and never takes the GIL.
ctypedef void (*burst_fn)(crypto_t *c, crypto_op_t *ops, uint32_t n) noexcept nogil
ctypedef int (*cipher_fn)(crypto_t *c, const uint8_t *iv, const uint8_t *src, uint8_t *dst,
                          uint32_t n, int enc) noexcept nogil
ctypedef void (*hmac_fn)(const hmac_ctx_t *hin, const hmac_ctx_t *hout, const uint8_t *d,
                         size_t n, const uint8_t *d2, size_t n2, uint8_t *md) noexcept nogil

ctypedef struct crypto_t:
    uint8_t cipher
    uint8_t integ
    uint8_t backend             # the backend actually chosen (never AUTO)
    uint8_t aead
    uint8_t esn
    uint8_t implicit_iv
    uint8_t key_len
    uint8_t iv_len              # IV bytes on the wire (0 with an implicit IV)
    uint8_t icv_len
    uint8_t block               # cipher block size the padded length must be a multiple of
    uint8_t salt[4]             # RFC 4106 / 4543 / 7634 salt, RFC 3686 nonce
    EVP_CIPHER_CTX *ectx
    EVP_CIPHER_CTX *dctx
    DES_key_schedule des_ks
    hmac_ctx_t hin              # HMAC state after the inner pad block (RFC 2104)
    hmac_ctx_t hout             # HMAC state after the outer pad block
    cipher_fn cipher_op
    hmac_fn hmac
    uint8_t digest_len
    void *mb                    # intel-ipsec-mb key material, NULL when not used
    burst_fn seal_one           # for single packets
    burst_fn open_one
    burst_fn seal_burst         # for batches
    burst_fn open_burst
    burst_fn open_noverify      # decrypt only, the ICV stripped unchecked (offline tools)
    burst_fn open_portable      # OpenSSL's open, kept when another backend takes over

# The intel-ipsec-mb backend is a separate, optional extension (fastpath.mb) built only where
# the library is present; it registers these hooks when imported.
ctypedef int (*mb_setup_fn)(crypto_t *c, const uint8_t *key, size_t klen, const uint8_t *akey,
                            size_t aklen, bint required) except -1
ctypedef void (*mb_free_fn)(crypto_t *c) noexcept nogil

cdef void crypto_register_mb(mb_setup_fn setup, mb_free_fn release, str arch) noexcept

cdef int crypto_init(crypto_t *c, int cipher, int integ, int icv_len, const uint8_t[::1] enc_key,
                     const uint8_t[::1] auth_key, int backend, bint esn, bint implicit_iv) except -1
cdef void crypto_free(crypto_t *c) noexcept nogil
cdef extern from "rand_pool.h" nogil:
    # n <= 16 unpredictable bytes from a per-thread pool of OpenSSL DRBG output; -1 on failure
    int crypto_random "fp_random"(uint8_t *out, uint32_t n)


# The AEAD inputs of every backend, defined once.
cdef inline const uint8_t *aad_of(const crypto_t *c, const crypto_op_t *op, uint8_t *buf,
                                  uint32_t *n) noexcept nogil:
    # RFC 4106 section 5: without ESN the AAD is the ESP header itself (SPI, sequence
    # number); with ESN, SPI || high || low built in buf (16 bytes of room)
    if c.esn:
        fp_esn_aad16(buf, op.esp, op.seq)
        n[0] = 12
        return buf
    n[0] = 8
    return op.esp


cdef inline void nonce_of(const crypto_t *c, const crypto_op_t *op, uint8_t *nonce) noexcept nogil:
    # salt || IV, or salt || sequence number with an implicit IV; nonce has 16 bytes of room
    fp_nonce16(nonce, c.salt, op.iv, op.seq)
