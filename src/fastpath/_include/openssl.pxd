# OpenSSL libcrypto declarations used by the kernel. Declarations only, no logic.
from libc.stdint cimport uint8_t

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                          const unsigned char *key, const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                         const unsigned char *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    const EVP_CIPHER *EVP_aes_128_cbc()
    const EVP_CIPHER *EVP_aes_192_cbc()
    const EVP_CIPHER *EVP_aes_256_cbc()
    const EVP_CIPHER *EVP_aes_128_ctr()
    const EVP_CIPHER *EVP_aes_192_ctr()
    const EVP_CIPHER *EVP_aes_256_ctr()
    const EVP_CIPHER *EVP_aes_128_gcm()
    const EVP_CIPHER *EVP_aes_192_gcm()
    const EVP_CIPHER *EVP_aes_256_gcm()
    const EVP_CIPHER *EVP_chacha20_poly1305()
    const EVP_CIPHER *EVP_des_ede3_cbc()
    enum:
        EVP_CTRL_AEAD_SET_IVLEN
        EVP_CTRL_AEAD_GET_TAG
        EVP_CTRL_AEAD_SET_TAG

cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t len)
    void OPENSSL_cleanse(void *ptr, size_t len)
    const char *OpenSSL_version(int t)
    unsigned long OpenSSL_version_num()
    enum:
        OPENSSL_VERSION

cdef extern from "openssl/opensslv.h":
    const char *OPENSSL_VERSION_TEXT

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char *buf, int num)

# Low-level digests: copying a context struct is how HMAC inner/outer pad states are
# precomputed once per SA (RFC 2104 section 4, "precomputed" keys).
cdef extern from "openssl/md5.h" nogil:
    ctypedef struct MD5_CTX:
        pass
    int MD5_Init(MD5_CTX *c)
    int MD5_Update(MD5_CTX *c, const void *data, size_t n)
    int MD5_Final(unsigned char *md, MD5_CTX *c)

cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA_CTX:
        pass
    ctypedef struct SHA256_CTX:
        pass
    ctypedef struct SHA512_CTX:
        pass
    int SHA1_Init(SHA_CTX *c)
    int SHA1_Update(SHA_CTX *c, const void *data, size_t n)
    int SHA1_Final(unsigned char *md, SHA_CTX *c)
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)
    int SHA384_Init(SHA512_CTX *c)
    int SHA384_Update(SHA512_CTX *c, const void *data, size_t n)
    int SHA384_Final(unsigned char *md, SHA512_CTX *c)
    int SHA512_Init(SHA512_CTX *c)
    int SHA512_Update(SHA512_CTX *c, const void *data, size_t n)
    int SHA512_Final(unsigned char *md, SHA512_CTX *c)

# Single DES lives in OpenSSL 3's legacy provider for EVP; the DES_* calls are still
# exported and need no provider, so the seed's cipher works on a default install.
cdef extern from "openssl/des.h" nogil:
    ctypedef unsigned char DES_cblock[8]
    ctypedef struct DES_key_schedule:
        pass
    void DES_set_key_unchecked(const DES_cblock *key, DES_key_schedule *schedule)
    void DES_ncbc_encrypt(const unsigned char *input, unsigned char *output, long length,
                          DES_key_schedule *schedule, DES_cblock *ivec, int enc)
    enum:
        DES_ENCRYPT
        DES_DECRYPT
