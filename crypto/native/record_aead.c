/*
 * AES-256-GCM for the record layer (issue 13, "per-record cost"). Through node:crypto every record
 * pays a fresh EVP_CIPHER_CTX and OpenSSL 3's cipher lookup by name (a hash table, a string
 * compare and a lock): about 7.5 us for sealing and opening one 64-byte record, against 0.8 us here.
 *
 * Contexts: each direction keeps its key, IV and counter, and each thread a pool of keyed contexts
 * that directions take in turn (record_pool.h says why and how; record_pool.c their lifetime).
 *
 * The nonce is the direction's IV XOR the record's sequence number (64-bit big-endian,
 * right-aligned; docs/PROTOCOL.md "Records"). The counter lives here, beside the key: every seal
 * or successful open uses the next number, so no call can repeat a nonce under one key, and the
 * context refuses to go past MAX_RECORDS (far beyond the protocol's rekey limit).
 *
 * Output goes into caller-provided buffers (no allocation per record). A failed open wipes the
 * bytes it may have written, so unauthenticated plaintext never reaches the caller.
 *
 * Links against the OpenSSL inside the node binary (its exported symbols), built from source by
 * `npm ci` (binding.gyp). The reference implementation is crypto/record-cipher.ts on node:crypto;
 * tests/record-cipher.test.ts checks both against the protocol vectors and each other.
 */
#include <node_api.h>
#include "napi_util.h" /* throw_error (clears OpenSSL's error queue), bytes_of */
#include "record_pool.h" /* direction_t, the per-thread pool, context_for */
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <stdint.h>
#include <string.h>

#define TAG_LEN 16
/* 2^40 records per key: the protocol rekeys after 2^20 (REKEY_AFTER_RECORDS). */
#define MAX_RECORDS ((uint64_t)1 << 40)

/*
 * The type tag of this addon's contexts (napi_type_tag_object, N-API 8): an External made by
 * another addon, or anything else, is refused before its pointer is used as a direction_t.
 */
static const napi_type_tag DIRECTION_TAG = {0x636f6d6d75736963ULL, 0x7265632d61656164ULL};

/* The context an argument names, or NULL with a TypeError thrown when it is not one of ours. */
static direction_t *direction_of(napi_env env, napi_value v) {
  void *p = NULL;
  bool ours = false;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_check_object_type_tag(env, v, &DIRECTION_TAG, &ours) != napi_ok || !ours ||
      napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, "ERR_AEAD_ARGS", "not a record AEAD context");
    return NULL;
  }
  return (direction_t *)p;
}

/*
 * The context of a seal (encrypt) or open call: one of ours, live, of that role, with record
 * numbers left. NULL with the error thrown otherwise (TypeError for anything not our context).
 */
static direction_t *usable_direction(napi_env env, napi_value v, bool encrypt) {
  direction_t *d = direction_of(env, v);
  if (d == NULL) return NULL;
  if (!d->live || (d->encrypt != 0) != encrypt) {
    throw_error(env, "ERR_AEAD_STATE", encrypt ? "not a live sealing context" : "not a live opening context");
    return NULL;
  }
  if (d->seq >= MAX_RECORDS) {
    throw_error(env, "ERR_AEAD_EXHAUSTED", "record counter exhausted for this key");
    return NULL;
  }
  return d;
}

static void nonce_for(const direction_t *d, uint8_t out[IV_LEN]) {
  memcpy(out, d->iv, IV_LEN);
  for (int i = 0; i < 8; i++) out[IV_LEN - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));
}

/* create(key: Uint8Array(32), iv: Uint8Array(12), encrypt: boolean) -> External */
static napi_value create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) {
    return throw_error(env, "ERR_AEAD_ARGS", "create(key, iv, encrypt)");
  }
  uint8_t *key, *iv;
  size_t key_len, iv_len;
  bool encrypt;
  if (!bytes_of(env, argv[0], &key, &key_len) || key_len != KEY_LEN) return throw_error(env, "ERR_AEAD_ARGS", "key must be 32 bytes");
  if (!bytes_of(env, argv[1], &iv, &iv_len) || iv_len != IV_LEN) return throw_error(env, "ERR_AEAD_ARGS", "iv must be 12 bytes");
  if (napi_get_value_bool(env, argv[2], &encrypt) != napi_ok) return throw_error(env, "ERR_AEAD_ARGS", "encrypt must be a boolean");
  pool_t *pool = NULL;
  if (napi_get_instance_data(env, (void **)&pool) != napi_ok || pool == NULL) return throw_error(env, "ERR_AEAD_STATE", "no context pool");
  direction_t *d = direction_new(pool, key, iv, encrypt ? 1 : 0);
  if (d == NULL) return throw_error(env, "ERR_AEAD_MEMORY", "out of memory");
  napi_value out;
  if (napi_create_external(env, d, finalize_direction, NULL, &out) != napi_ok) {
    finalize_direction(env, d, NULL); /* never wrapped: wiped, freed, its pool reference dropped */
    return throw_error(env, "ERR_AEAD_MEMORY", "cannot wrap the context");
  }
  /* Untagged, the context would be refused by every call: wipe it (its finalizer frees it). */
  if (napi_type_tag_object(env, out, &DIRECTION_TAG) != napi_ok) {
    wipe_direction(d);
    return throw_error(env, "ERR_AEAD_STATE", "cannot tag the context");
  }
  return out;
}

static napi_value number(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

/*
 * The core of a seal: head||tail (total <= INT32_MAX, checked by the callers) as one plaintext
 * under the next record number, `aad` as associated data, ciphertext then the 16-byte tag at
 * dst. Returns 1 (the counter advanced), or 0 with dst[0..total+16) wiped and OpenSSL's error
 * queue cleared.
 */
static int seal_into(direction_t *d, const uint8_t *aad, size_t aad_len, const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len, uint8_t *dst) {
  size_t total = head_len + tail_len;
  uint8_t nonce[IV_LEN];
  nonce_for(d, nonce);
  EVP_CIPHER_CTX *ctx = context_for(d);
  int n = 0, ok = ctx != NULL && aad_len <= INT32_MAX && EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1;
  if (ok && aad_len > 0) ok = EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1;
  size_t at = 0;
  if (ok && head_len > 0) {
    ok = EVP_EncryptUpdate(ctx, dst, &n, head, (int)head_len) == 1;
    at += (size_t)n;
  }
  if (ok && tail_len > 0) {
    ok = EVP_EncryptUpdate(ctx, dst + at, &n, tail, (int)tail_len) == 1;
    at += (size_t)n;
  }
  if (ok) {
    ok = EVP_EncryptFinal_ex(ctx, dst + at, &n) == 1;
    at += (size_t)n;
  }
  if (ok) ok = at == total && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, dst + at) == 1;
  OPENSSL_cleanse(nonce, IV_LEN);
  if (!ok) {
    OPENSSL_cleanse(dst, total + TAG_LEN);
    ERR_clear_error();
    return 0;
  }
  d->seq++;
  return 1;
}

/*
 * seal(dir, aad, head, tail | undefined, out, offset) -> bytes written (|head| + |tail| + 16)
 * Seals head||tail as one plaintext with the next sequence number, ciphertext then tag at
 * out[offset..]. Throws when out is too small, the context is not for sealing or used up.
 */
static napi_value seal(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6) return throw_error(env, "ERR_AEAD_ARGS", "seal(dir, aad, head, tail, out, offset)");
  direction_t *d = usable_direction(env, argv[0], true);
  if (d == NULL) return NULL;
  uint8_t *aad, *head, *tail = NULL, *out;
  size_t aad_len, head_len, tail_len = 0, out_len;
  napi_valuetype tt;
  if (!bytes_of(env, argv[1], &aad, &aad_len) || !bytes_of(env, argv[2], &head, &head_len)) return throw_error(env, "ERR_AEAD_ARGS", "aad and head must be Uint8Arrays");
  if (napi_typeof(env, argv[3], &tt) != napi_ok) return throw_error(env, "ERR_AEAD_ARGS", "bad tail");
  if (tt != napi_undefined && tt != napi_null && !bytes_of(env, argv[3], &tail, &tail_len)) return throw_error(env, "ERR_AEAD_ARGS", "tail must be a Uint8Array");
  if (!bytes_of(env, argv[4], &out, &out_len)) return throw_error(env, "ERR_AEAD_ARGS", "out must be a Uint8Array");
  int64_t offset;
  if (napi_get_value_int64(env, argv[5], &offset) != napi_ok || offset < 0) return throw_error(env, "ERR_AEAD_ARGS", "bad offset");
  size_t total = head_len + tail_len;
  if (total > INT32_MAX || (size_t)offset > out_len || out_len - (size_t)offset < total + TAG_LEN) return throw_error(env, "ERR_AEAD_ARGS", "output buffer too small");
  if (!seal_into(d, aad, aad_len, head, head_len, tail, tail_len, out + offset)) return throw_error(env, "ERR_AEAD_SEAL", "AES-256-GCM seal failed");
  return number(env, (double)(total + TAG_LEN));
}

static int open_into(direction_t *d, const uint8_t *aad, size_t aad_len, const uint8_t *sealed, size_t len, uint8_t *dst);

/*
 * open(dir, aad, sealed, out, offset) -> plaintext length, or -1 when the tag does not verify
 * (nothing of the plaintext is left in out, and the counter does not advance).
 */
static napi_value open_record(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5) return throw_error(env, "ERR_AEAD_ARGS", "open(dir, aad, sealed, out, offset)");
  direction_t *d = usable_direction(env, argv[0], false);
  if (d == NULL) return NULL;
  uint8_t *aad, *sealed, *out;
  size_t aad_len, sealed_len, out_len;
  if (!bytes_of(env, argv[1], &aad, &aad_len) || !bytes_of(env, argv[2], &sealed, &sealed_len) || !bytes_of(env, argv[3], &out, &out_len)) {
    return throw_error(env, "ERR_AEAD_ARGS", "aad, sealed and out must be Uint8Arrays");
  }
  int64_t offset;
  if (napi_get_value_int64(env, argv[4], &offset) != napi_ok || offset < 0) return throw_error(env, "ERR_AEAD_ARGS", "bad offset");
  if (sealed_len < TAG_LEN) return number(env, -1);
  size_t len = sealed_len - TAG_LEN;
  if (len > INT32_MAX || (size_t)offset > out_len || out_len - (size_t)offset < len) return throw_error(env, "ERR_AEAD_ARGS", "output buffer too small");
  if (!open_into(d, aad, aad_len, sealed, len, out + offset)) return number(env, -1);
  return number(env, (double)len);
}

/*
 * The core of an open: verifies and decrypts `sealed` (ciphertext || tag, `len` + 16 bytes) into
 * dst, which may be sealed itself (in place). Returns 1, or 0 with dst[0..len) wiped.
 */
static int open_into(direction_t *d, const uint8_t *aad, size_t aad_len, const uint8_t *sealed, size_t len, uint8_t *dst) {
  uint8_t nonce[IV_LEN];
  uint8_t tag[TAG_LEN];
  memcpy(tag, sealed + len, TAG_LEN); /* sealed may overlap dst: keep the tag */
  nonce_for(d, nonce);
  EVP_CIPHER_CTX *ctx = context_for(d);
  int n = 0, ok = ctx != NULL && aad_len <= INT32_MAX && EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1;
  if (ok && aad_len > 0) ok = EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1;
  size_t at = 0;
  if (ok && len > 0) {
    ok = EVP_DecryptUpdate(ctx, dst, &n, sealed, (int)len) == 1;
    at += (size_t)n;
  }
  if (ok) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) == 1;
  if (ok) {
    ok = EVP_DecryptFinal_ex(ctx, dst + at, &n) == 1;
    at += (size_t)n;
  }
  OPENSSL_cleanse(nonce, IV_LEN);
  if (!ok || at != len) {
    OPENSSL_cleanse(dst, len);
    /* A record that does not verify is a peer's doing: whatever OpenSSL queued about it must not
       reach the next, unrelated node:crypto call of this thread (which would fail with it). */
    ERR_clear_error();
    return 0;
  }
  d->seq++;
  return 1;
}

/*
 * openAt(dir, buf, at, aadLen, sealedLen) -> plaintext length, or -1 when the tag does not verify.
 * In place: the associated data is buf[at, at+aadLen), the sealed record (ciphertext || tag)
 * follows it, and the plaintext replaces the ciphertext (buf[at+aadLen, +sealedLen-16)). No view
 * objects per record. A failed open wipes that range and leaves the counter where it was.
 */
static napi_value open_at(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5) return throw_error(env, "ERR_AEAD_ARGS", "openAt(dir, buf, at, aadLen, sealedLen)");
  direction_t *d = usable_direction(env, argv[0], false);
  if (d == NULL) return NULL;
  uint8_t *buf;
  size_t buf_len;
  if (!bytes_of(env, argv[1], &buf, &buf_len)) return throw_error(env, "ERR_AEAD_ARGS", "buf must be a Uint8Array");
  int64_t at, aad_len, sealed_len;
  if (napi_get_value_int64(env, argv[2], &at) != napi_ok || napi_get_value_int64(env, argv[3], &aad_len) != napi_ok || napi_get_value_int64(env, argv[4], &sealed_len) != napi_ok) {
    return throw_error(env, "ERR_AEAD_ARGS", "at, aadLen and sealedLen must be numbers");
  }
  if (at < 0 || aad_len < 0 || sealed_len < 0 || sealed_len > INT32_MAX || aad_len > INT32_MAX || (uint64_t)at > buf_len || buf_len - (size_t)at < (size_t)aad_len + (size_t)sealed_len) {
    return throw_error(env, "ERR_AEAD_ARGS", "range outside the buffer");
  }
  if (sealed_len < TAG_LEN) return number(env, -1);
  uint8_t *aad = buf + at;
  uint8_t *sealed = aad + aad_len;
  size_t len = (size_t)sealed_len - TAG_LEN;
  if (!open_into(d, aad, (size_t)aad_len, sealed, len, sealed)) return number(env, -1);
  return number(env, (double)len);
}

/*
 * sealAt(dir, rec, aadLen, head, tail | undefined) -> bytes written (|head| + |tail| + 16)
 * The associated data is rec[0, aadLen); ciphertext then tag are written at rec[aadLen..].
 * Throws as seal() does.
 */
static napi_value seal_at(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5) return throw_error(env, "ERR_AEAD_ARGS", "sealAt(dir, rec, aadLen, head, tail)");
  direction_t *d = usable_direction(env, argv[0], true);
  if (d == NULL) return NULL;
  uint8_t *rec, *head, *tail = NULL;
  size_t rec_len, head_len, tail_len = 0;
  int64_t aad_len;
  napi_valuetype tt;
  if (!bytes_of(env, argv[1], &rec, &rec_len) || !bytes_of(env, argv[3], &head, &head_len)) return throw_error(env, "ERR_AEAD_ARGS", "rec and head must be Uint8Arrays");
  if (napi_get_value_int64(env, argv[2], &aad_len) != napi_ok || aad_len < 0 || (uint64_t)aad_len > rec_len) return throw_error(env, "ERR_AEAD_ARGS", "bad aadLen");
  if (napi_typeof(env, argv[4], &tt) != napi_ok) return throw_error(env, "ERR_AEAD_ARGS", "bad tail");
  if (tt != napi_undefined && tt != napi_null && !bytes_of(env, argv[4], &tail, &tail_len)) return throw_error(env, "ERR_AEAD_ARGS", "tail must be a Uint8Array");
  size_t total = head_len + tail_len;
  if (total > INT32_MAX || rec_len - (size_t)aad_len < total + TAG_LEN) return throw_error(env, "ERR_AEAD_ARGS", "output buffer too small");
  if (!seal_into(d, rec, (size_t)aad_len, head, head_len, tail, tail_len, rec + aad_len)) return throw_error(env, "ERR_AEAD_SEAL", "AES-256-GCM seal failed");
  return number(env, (double)(total + TAG_LEN));
}

/* sequence(dir) -> the number the next seal/open will use. */
static napi_value sequence(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) return throw_error(env, "ERR_AEAD_ARGS", "sequence(dir)");
  direction_t *d = direction_of(env, argv[0]);
  if (d == NULL) return NULL; /* the TypeError is thrown */
  return number(env, (double)d->seq);
}

/* destroy(dir): wipes key, IV and its pool slot's key schedule now, not at collection. */
static napi_value destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) return throw_error(env, "ERR_AEAD_ARGS", "destroy(dir)");
  direction_t *d = direction_of(env, argv[0]);
  if (d == NULL) return NULL; /* the TypeError is thrown */
  wipe_direction(d);
  return NULL;
}

/* crypto/native/handshake_keys.c: the handshake's key exchange, signatures and hashes. */
int register_handshake_functions(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  pool_t *pool = pool_new();
  if (pool == NULL || napi_set_instance_data(env, pool, finalize_pool, NULL) != napi_ok) {
    OPENSSL_free(pool);
    napi_throw_error(env, "ERR_AEAD_MEMORY", "cannot allocate the context pool");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"create", NULL, create, NULL, NULL, NULL, napi_default, NULL},
      {"seal", NULL, seal, NULL, NULL, NULL, napi_default, NULL},
      {"open", NULL, open_record, NULL, NULL, NULL, napi_default, NULL},
      {"openAt", NULL, open_at, NULL, NULL, NULL, napi_default, NULL},
      {"sealAt", NULL, seal_at, NULL, NULL, NULL, napi_default, NULL},
      {"sequence", NULL, sequence, NULL, NULL, NULL, napi_default, NULL},
      {"destroy", NULL, destroy, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  if (!register_handshake_functions(env, exports)) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
