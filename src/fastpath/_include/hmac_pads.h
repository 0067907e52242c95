/* HMAC (RFC 2104) over OpenSSL's digests with the inner and outer pad blocks absorbed once
 * per SA: a packet then costs a struct copy and the digest of its own bytes, which is the
 * "precomputed" form RFC 2104 section 4 describes and intel-ipsec-mb also expects.
 * The digests themselves are OpenSSL's; this file only composes them. */
#ifndef FASTPATH_HMAC_PADS_H
#define FASTPATH_HMAC_PADS_H

#include <stdint.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/md5.h>
#include <openssl/sha.h>

typedef union {
    MD5_CTX md5;
    SHA_CTX sha1;
    SHA256_CTX sha256;
    SHA512_CTX sha512;
} fp_hmac_ctx;

#define FP_HMAC_MAX_BLOCK 128

#define FP_DEFINE_HMAC(name, field, CTX_T, PFX, LEN, BLOCK)                                  \
static inline void fp_hmac_##name(const fp_hmac_ctx *hin, const fp_hmac_ctx *hout,            \
                                  const uint8_t *d, size_t n, const uint8_t *d2, size_t n2,   \
                                  uint8_t *md)                                                \
{                                                                                             \
    CTX_T x = hin->field;                                                                     \
    PFX##_Update(&x, d, n);                                                                   \
    if (n2) PFX##_Update(&x, d2, n2);                                                         \
    PFX##_Final(md, &x);                                                                      \
    x = hout->field;                                                                          \
    PFX##_Update(&x, md, LEN);                                                                \
    PFX##_Final(md, &x);                                                                      \
}                                                                                             \
static inline void fp_hmac_##name##_pads(fp_hmac_ctx *hin, fp_hmac_ctx *hout,                 \
                                         const uint8_t *key, size_t klen)                     \
{                                                                                             \
    uint8_t k0[BLOCK], pad[BLOCK];                                                            \
    CTX_T x;                                                                                  \
    size_t i;                                                                                 \
    memset(k0, 0, BLOCK);                                                                     \
    if (klen > BLOCK) { /* RFC 2104 section 2: keys longer than B are hashed first */         \
        PFX##_Init(&x); PFX##_Update(&x, key, klen); PFX##_Final(k0, &x);                     \
    } else if (klen) {                                                                        \
        memcpy(k0, key, klen);                                                                \
    }                                                                                         \
    for (i = 0; i < BLOCK; i++) pad[i] = k0[i] ^ 0x36;                                        \
    PFX##_Init(&hin->field); PFX##_Update(&hin->field, pad, BLOCK);                           \
    for (i = 0; i < BLOCK; i++) pad[i] = k0[i] ^ 0x5c;                                        \
    PFX##_Init(&hout->field); PFX##_Update(&hout->field, pad, BLOCK);                         \
    OPENSSL_cleanse(k0, BLOCK);                                                               \
    OPENSSL_cleanse(pad, BLOCK);                                                              \
    OPENSSL_cleanse(&x, sizeof x);                                                            \
}

FP_DEFINE_HMAC(md5, md5, MD5_CTX, MD5, 16, 64)
FP_DEFINE_HMAC(sha1, sha1, SHA_CTX, SHA1, 20, 64)
FP_DEFINE_HMAC(sha256, sha256, SHA256_CTX, SHA256, 32, 64)
FP_DEFINE_HMAC(sha384, sha512, SHA512_CTX, SHA384, 48, 128)
FP_DEFINE_HMAC(sha512, sha512, SHA512_CTX, SHA512, 64, 128)

#endif
