/*
 * The handshake's primitives in the record AEAD's addon (issue 13, full handshakes; registered by
 * record_aead.c's init): X25519 key generation and agreement, Ed25519 signing, randoms,
 * and (handshake_hash.c) SHA-256, HMAC-SHA256 and HKDF-SHA256, all through the OpenSSL inside node.
 * crypto/handshake-keys.ts and crypto/handshake-crypto.ts keep node:crypto as the reference and
 * fallback; tests/handshake-keys.test.ts checks both against RFC vectors and each other.
 */
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <string.h>
#include "napi_util.h"

/*
 * Public-key operations. Through node:crypto each of these makes a KeyObject, a job object and a
 * JWK or DER encoding per key; here a key is one EVP_PKEY behind an External, its public value
 * comes out raw, and an Ed25519 key keeps its signing context. Private keys never leave native memory: an X25519 key is freed (OpenSSL cleanses it) by
 * pkeyDestroy() as soon as its one agreement is done, or by the finalizer at the latest.
 */
#define PKEY_X25519 1
#define PKEY_ED25519 2

typedef struct pkey_holder {
  EVP_PKEY *pkey;
  EVP_MD_CTX *sign; /* Ed25519: initialised for signing with pkey, kept across signatures */
  int kind;
} pkey_holder_t;

static void free_holder_key(pkey_holder_t *h) {
  EVP_MD_CTX_free(h->sign);
  h->sign = NULL;
  EVP_PKEY_free(h->pkey); /* the ECX key's private bytes are cleansed on free */
  h->pkey = NULL;
}

static void finalize_holder(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  pkey_holder_t *h = (pkey_holder_t *)data;
  free_holder_key(h);
  OPENSSL_free(h);
}

/* Marks key Externals, so a record direction (or anything else) is never taken for a key. */
static const napi_type_tag PKEY_TAG = {0x434d5350706b6579ULL, 0x6861736873686b31ULL};

static pkey_holder_t *key_of(napi_env env, napi_value v) {
  bool tagged = false;
  void *h = external_of(env, v);
  if (h == NULL || napi_check_object_type_tag(env, v, &PKEY_TAG, &tagged) != napi_ok || !tagged) return NULL;
  return (pkey_holder_t *)h;
}

static pkey_holder_t *holder_of(napi_env env, napi_value v, int kind) {
  pkey_holder_t *h = key_of(env, v);
  return h != NULL && h->kind == kind && h->pkey != NULL ? h : NULL;
}

/* Wraps pkey (taken over) in an External and writes its raw 32-byte public value to pub. */
static napi_value wrap_pkey(napi_env env, EVP_PKEY *pkey, int kind, uint8_t *pub) {
  size_t len = 32;
  if (pkey == NULL) return throw_error(env, "ERR_PKEY", "key generation failed");
  if (EVP_PKEY_get_raw_public_key(pkey, pub, &len) != 1 || len != 32) {
    EVP_PKEY_free(pkey);
    return throw_error(env, "ERR_PKEY", "no public key");
  }
  pkey_holder_t *h = (pkey_holder_t *)OPENSSL_zalloc(sizeof(pkey_holder_t));
  if (h == NULL) {
    EVP_PKEY_free(pkey);
    return throw_error(env, "ERR_AEAD_MEMORY", "out of memory");
  }
  h->pkey = pkey;
  h->kind = kind;
  napi_value out;
  if (napi_create_external(env, h, finalize_holder, NULL, &out) != napi_ok) {
    free_holder_key(h);
    OPENSSL_free(h);
    return throw_error(env, "ERR_AEAD_MEMORY", "cannot wrap the key");
  }
  if (napi_type_tag_object(env, out, &PKEY_TAG) != napi_ok) return throw_error(env, "ERR_PKEY", "cannot tag the key");
  return out;
}

/*
 * pkeyGenerate(kind: 1 X25519 | 2 Ed25519, pub: Uint8Array(32)) -> External
 * pkeyFromPrivate(kind, private: Uint8Array(32), pub: Uint8Array(32)) -> External
 * A fresh key from OpenSSL's private DRBG (RAND_priv_bytes; RFC 7748 5 / RFC 8032 5.1.5 clamp
 * and hash inside OpenSSL), or one from fixed private bytes (test vectors). The raw public
 * value goes to pub.
 */
static napi_value pkey_make(napi_env env, napi_callback_info info, int from_private) {
  size_t argc = 3;
  napi_value argv[3];
  size_t want = from_private ? 3 : 2;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != want) return throw_error(env, "ERR_PKEY_ARGS", "bad arguments");
  int32_t kind;
  if (napi_get_value_int32(env, argv[0], &kind) != napi_ok || (kind != PKEY_X25519 && kind != PKEY_ED25519)) return throw_error(env, "ERR_PKEY_ARGS", "bad key kind");
  uint8_t *pub, *given = NULL;
  size_t pub_len, given_len = 0;
  if (from_private && (!bytes_of(env, argv[1], &given, &given_len) || given_len != 32)) return throw_error(env, "ERR_PKEY_ARGS", "private key must be 32 bytes");
  if (!bytes_of(env, argv[want - 1], &pub, &pub_len) || pub_len != 32) return throw_error(env, "ERR_PKEY_ARGS", "pub must be 32 bytes");
  uint8_t priv[32];
  if (from_private) memcpy(priv, given, 32);
  else if (RAND_priv_bytes(priv, 32) != 1) return throw_error(env, "ERR_PKEY", "no randomness");
  EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(kind == PKEY_X25519 ? EVP_PKEY_X25519 : EVP_PKEY_ED25519, NULL, priv, 32);
  OPENSSL_cleanse(priv, 32);
  return wrap_pkey(env, pkey, kind, pub);
}

static napi_value pkey_generate(napi_env env, napi_callback_info info) { return pkey_make(env, info, 0); }
static napi_value pkey_from_private(napi_env env, napi_callback_info info) { return pkey_make(env, info, 1); }

/*
 * x25519Derive(key: External, peer: Uint8Array(32), out: Uint8Array(32)) -> boolean
 * RFC 7748 X25519 of the own private key and the peer's raw public value into out. false when
 * OpenSSL refuses (an all-zero result, i.e. a low-order peer value: RFC 7748 6.1), out zeroed.
 */
static napi_value x25519_derive(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return throw_error(env, "ERR_PKEY_ARGS", "x25519Derive(key, peer, out)");
  pkey_holder_t *h = holder_of(env, argv[0], PKEY_X25519);
  if (h == NULL) return throw_error(env, "ERR_PKEY_STATE", "not a live X25519 key");
  uint8_t *peer, *out;
  size_t peer_len, out_len;
  if (!bytes_of(env, argv[1], &peer, &peer_len) || peer_len != 32) return throw_error(env, "ERR_PKEY_ARGS", "peer must be 32 bytes");
  if (!bytes_of(env, argv[2], &out, &out_len) || out_len != 32) return throw_error(env, "ERR_PKEY_ARGS", "out must be 32 bytes");
  EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer, 32);
  EVP_PKEY_CTX *ctx = pk != NULL ? EVP_PKEY_CTX_new_from_pkey(NULL, h->pkey, NULL) : NULL;
  size_t len = 32;
  int ok = ctx != NULL && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, pk) == 1 && EVP_PKEY_derive(ctx, out, &len) == 1 && len == 32;
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(pk);
  if (!ok) {
    OPENSSL_cleanse(out, 32);
    fail_quietly();
  }
  napi_value r;
  napi_get_boolean(env, ok != 0, &r);
  return r;
}

/*
 * ed25519Sign(key: External, message: Uint8Array, out: Uint8Array(64))
 * RFC 8032 Ed25519 (pure) signature of message into out, through the key's kept context.
 */
static napi_value ed25519_sign(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return throw_error(env, "ERR_PKEY_ARGS", "ed25519Sign(key, message, out)");
  pkey_holder_t *h = holder_of(env, argv[0], PKEY_ED25519);
  if (h == NULL) return throw_error(env, "ERR_PKEY_STATE", "not a live Ed25519 key");
  uint8_t *msg, *out;
  size_t msg_len, out_len;
  if (!bytes_of(env, argv[1], &msg, &msg_len)) return throw_error(env, "ERR_PKEY_ARGS", "message must be a Uint8Array");
  if (!bytes_of(env, argv[2], &out, &out_len) || out_len != 64) return throw_error(env, "ERR_PKEY_ARGS", "out must be 64 bytes");
  size_t len = 64;
  int ok = h->sign != NULL && EVP_DigestSign(h->sign, out, &len, msg, msg_len) == 1;
  if (!ok) {
    fail_quietly();
    /* First use, or a context that will not sign twice: initialise it (again) and retry once. */
    EVP_MD_CTX_free(h->sign);
    h->sign = EVP_MD_CTX_new();
    len = 64;
    ok = h->sign != NULL && EVP_DigestSignInit(h->sign, NULL, NULL, NULL, h->pkey) == 1 && EVP_DigestSign(h->sign, out, &len, msg, msg_len) == 1;
  }
  if (!ok || len != 64) {
    OPENSSL_cleanse(out, 64);
    return throw_error(env, "ERR_PKEY", "Ed25519 signing failed");
  }
  return NULL;
}

/* pkeyDestroy(key): frees the key now (OpenSSL cleanses its private bytes); later use throws. */
static napi_value pkey_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) return throw_error(env, "ERR_PKEY_ARGS", "pkeyDestroy(key)");
  pkey_holder_t *h = key_of(env, argv[0]);
  if (h == NULL) return throw_error(env, "ERR_PKEY_STATE", "not a key");
  free_holder_key(h);
  return NULL;
}

/* randomFill(out: Uint8Array): out filled from OpenSSL's public DRBG (RAND_bytes). */
static napi_value random_fill(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint8_t *out;
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || !bytes_of(env, argv[0], &out, &len) || len > INT32_MAX) return throw_error(env, "ERR_PKEY_ARGS", "randomFill(out)");
  if (len > 0 && RAND_bytes(out, (int)len) != 1) return throw_error(env, "ERR_PKEY", "no randomness");
  return NULL;
}

/* handshake_hash.c: SHA-256, HMAC-SHA256, HKDF-SHA256. */
int register_hash_functions(napi_env env, napi_value exports);

/* Adds the functions above and the hash functions to the addon's exports; 0 (an exception pending) on failure. */
int register_handshake_functions(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"pkeyGenerate", NULL, pkey_generate, NULL, NULL, NULL, napi_default, NULL},
      {"pkeyFromPrivate", NULL, pkey_from_private, NULL, NULL, NULL, napi_default, NULL},
      {"pkeyDestroy", NULL, pkey_destroy, NULL, NULL, NULL, napi_default, NULL},
      {"x25519Derive", NULL, x25519_derive, NULL, NULL, NULL, napi_default, NULL},
      {"ed25519Sign", NULL, ed25519_sign, NULL, NULL, NULL, napi_default, NULL},
      {"randomFill", NULL, random_fill, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return 0;
  return register_hash_functions(env, exports);
}
