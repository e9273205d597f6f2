/*
 * SHA-256, HMAC-SHA256 and HKDF-SHA256 for the handshake (issue 13), registered by
 * handshake_keys.c. crypto/handshake-crypto.ts keeps node:crypto as the reference and fallback;
 * tests/handshake-keys.test.ts checks both against RFC 5869 and each other.
 */
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>
#include "napi_util.h"

/*
 * SHA-256, HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) for the handshake's transcript
 * hashes and key schedule. node:crypto's hkdfSync makes two KeyObjects and an OpenSSL KDF
 * context per call and createHash/createHmac an object each; here one fetched digest and one
 * digest context per thread serve every call, and outputs go into caller-provided buffers.
 * Every intermediate value (padded keys, inner hashes, the PRK) is cleansed before returning.
 */
#define SHA256_LEN 32
#define SHA256_BLOCK 64

/* One per Node environment (main thread, each worker), freed by an environment cleanup hook. */
typedef struct hash_state {
  EVP_MD *sha256;   /* fetched once */
  EVP_MD_CTX *hash; /* reused for every SHA-256 of this environment */
} hash_state_t;

static void free_hash_state(void *arg) {
  hash_state_t *p = (hash_state_t *)arg;
  EVP_MD_CTX_free(p->hash);
  EVP_MD_free(p->sha256);
  OPENSSL_free(p);
}

static hash_state_t *hash_pool(napi_env env, napi_callback_info info) {
  hash_state_t *p = NULL;
  if (napi_get_cb_info(env, info, NULL, NULL, NULL, (void **)&p) != napi_ok || p == NULL) return NULL;
  if (p->sha256 == NULL) p->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
  if (p->hash == NULL) p->hash = EVP_MD_CTX_new();
  return p->sha256 != NULL && p->hash != NULL ? p : NULL;
}

typedef struct {
  const uint8_t *data;
  size_t len;
} span_t;

/* SHA-256 of the concatenation of n spans into out (32 bytes). */
static int digest_spans(hash_state_t *p, const span_t *parts, int n, uint8_t *out) {
  unsigned int len = 0;
  if (EVP_DigestInit_ex(p->hash, p->sha256, NULL) != 1) return 0;
  for (int i = 0; i < n; i++) {
    if (parts[i].len > 0 && EVP_DigestUpdate(p->hash, parts[i].data, parts[i].len) != 1) return 0;
  }
  return EVP_DigestFinal_ex(p->hash, out, &len) == 1 && len == SHA256_LEN;
}

/* HMAC-SHA256(key, m1 || m2 || m3) into out (RFC 2104; keys over one block are hashed first). */
static int hmac_spans(hash_state_t *p, const uint8_t *key, size_t key_len, const span_t *msg, int n, uint8_t *out) {
  uint8_t k[SHA256_BLOCK], pad[SHA256_BLOCK], inner[SHA256_LEN];
  int ok = 1;
  memset(k, 0, sizeof k);
  if (key_len > SHA256_BLOCK) {
    span_t ks = {key, key_len};
    ok = digest_spans(p, &ks, 1, k);
  } else if (key_len > 0) {
    memcpy(k, key, key_len);
  }
  span_t parts[4];
  if (ok) {
    for (int i = 0; i < SHA256_BLOCK; i++) pad[i] = k[i] ^ 0x36;
    parts[0].data = pad;
    parts[0].len = SHA256_BLOCK;
    for (int i = 0; i < n; i++) parts[i + 1] = msg[i];
    ok = digest_spans(p, parts, n + 1, inner);
  }
  if (ok) {
    for (int i = 0; i < SHA256_BLOCK; i++) pad[i] = k[i] ^ 0x5c;
    parts[1].data = inner;
    parts[1].len = SHA256_LEN;
    ok = digest_spans(p, parts, 2, out);
  }
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

/* sha256(out: Uint8Array(32), ...parts: Uint8Array (1 to 4)) */
static napi_value sha256_fn(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || argc > 5) return throw_error(env, "ERR_HASH_ARGS", "sha256(out, ...parts)");
  uint8_t *out;
  size_t out_len;
  if (!bytes_of(env, argv[0], &out, &out_len) || out_len != SHA256_LEN) return throw_error(env, "ERR_HASH_ARGS", "out must be 32 bytes");
  span_t parts[4];
  for (size_t i = 1; i < argc; i++) {
    uint8_t *d;
    size_t l;
    if (!bytes_of(env, argv[i], &d, &l)) return throw_error(env, "ERR_HASH_ARGS", "parts must be Uint8Arrays");
    parts[i - 1].data = d;
    parts[i - 1].len = l;
  }
  hash_state_t *p = hash_pool(env, info);
  if (p == NULL || !digest_spans(p, parts, (int)argc - 1, out)) return throw_error(env, "ERR_HASH", "SHA-256 failed");
  return NULL;
}

/* hmacSha256(key: Uint8Array, data: Uint8Array, out: Uint8Array(32)) */
static napi_value hmac_fn(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint8_t *key, *data, *out;
  size_t key_len, data_len, out_len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 || !bytes_of(env, argv[0], &key, &key_len) || !bytes_of(env, argv[1], &data, &data_len) ||
      !bytes_of(env, argv[2], &out, &out_len) || out_len != SHA256_LEN) {
    return throw_error(env, "ERR_HASH_ARGS", "hmacSha256(key, data, out32)");
  }
  hash_state_t *p = hash_pool(env, info);
  span_t m = {data, data_len};
  if (p == NULL || !hmac_spans(p, key, key_len, &m, 1, out)) return throw_error(env, "ERR_HASH", "HMAC-SHA256 failed");
  return NULL;
}

/*
 * hkdfSha256(ikm, salt, info, out, extract: boolean): RFC 5869 HKDF-SHA256 into out (at most
 * 255 * 32 bytes). With extract false, ikm is the PRK itself and only HKDF-Expand runs (2.3).
 * An empty salt is 32 zero bytes (2.2) - the same HMAC key as an empty one.
 */
static napi_value hkdf_fn(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  uint8_t *ikm, *salt, *inf, *out;
  size_t ikm_len, salt_len, info_len, out_len;
  bool extract;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 || !bytes_of(env, argv[0], &ikm, &ikm_len) || !bytes_of(env, argv[1], &salt, &salt_len) ||
      !bytes_of(env, argv[2], &inf, &info_len) || !bytes_of(env, argv[3], &out, &out_len) || napi_get_value_bool(env, argv[4], &extract) != napi_ok) {
    return throw_error(env, "ERR_HASH_ARGS", "hkdfSha256(ikm, salt, info, out, extract)");
  }
  if (out_len == 0 || out_len > 255 * SHA256_LEN) return throw_error(env, "ERR_HASH_ARGS", "HKDF output must be 1 to 8160 bytes");
  hash_state_t *p = hash_pool(env, info);
  if (p == NULL) return throw_error(env, "ERR_HASH", "no digest");
  uint8_t prk[SHA256_LEN], t[SHA256_LEN];
  const uint8_t *prk_p = ikm;
  size_t prk_len = ikm_len;
  int ok = 1;
  if (extract) {
    span_t m = {ikm, ikm_len};
    ok = hmac_spans(p, salt, salt_len, &m, 1, prk);
    prk_p = prk;
    prk_len = SHA256_LEN;
  }
  size_t got = 0;
  for (unsigned int i = 1; ok && got < out_len; i++) {
    uint8_t counter = (uint8_t)i;
    span_t m[3] = {{t, i == 1 ? 0 : SHA256_LEN}, {inf, info_len}, {&counter, 1}};
    ok = hmac_spans(p, prk_p, prk_len, m, 3, t);
    size_t take = out_len - got < SHA256_LEN ? out_len - got : SHA256_LEN;
    if (ok) memcpy(out + got, t, take);
    got += take;
  }
  OPENSSL_cleanse(prk, sizeof prk);
  OPENSSL_cleanse(t, sizeof t);
  if (!ok) {
    OPENSSL_cleanse(out, out_len);
    return throw_error(env, "ERR_HASH", "HKDF-SHA256 failed");
  }
  return NULL;
}

/*
 * Adds the functions above to the addon's exports; they share one per-environment
 * state (a fetched SHA-256 and a digest context), freed when the environment goes. Returns 0
 * (with a pending exception) on failure.
 */
int register_hash_functions(napi_env env, napi_value exports) {
  hash_state_t *hs = (hash_state_t *)OPENSSL_zalloc(sizeof(hash_state_t));
  if (hs == NULL || napi_add_env_cleanup_hook(env, free_hash_state, hs) != napi_ok) {
    OPENSSL_free(hs);
    napi_throw_error(env, "ERR_AEAD_MEMORY", "cannot allocate the hash state");
    return 0;
  }
  napi_property_descriptor props[] = {
      {"sha256", NULL, sha256_fn, NULL, NULL, NULL, napi_default, hs},
      {"hmacSha256", NULL, hmac_fn, NULL, NULL, NULL, napi_default, hs},
      {"hkdfSha256", NULL, hkdf_fn, NULL, NULL, NULL, napi_default, hs},
  };
  return napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) == napi_ok;
}
