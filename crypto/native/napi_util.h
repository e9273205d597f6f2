/* Small N-API helpers shared by the addon's native files (record_aead.c, handshake_keys.c, handshake_hash.c). */
#ifndef COMMUSIC_NAPI_UTIL_H
#define COMMUSIC_NAPI_UTIL_H
#include <node_api.h>
#include <openssl/err.h>
#include <stdint.h>

/*
 * Every failure path ends here or in fail_quietly(): OpenSSL's per-thread error queue is cleared,
 * since node:crypto reads that queue after its own calls and would report our stale error as its
 * own (seen: createPrivateKey failing after a refused low-order X25519 value).
 */
static inline napi_value throw_error(napi_env env, const char *code, const char *msg) {
  ERR_clear_error();
  napi_throw_error(env, code, msg);
  return NULL;
}

static inline void fail_quietly(void) { ERR_clear_error(); }

/* A Uint8Array argument (Buffers are): its bytes and length. Returns 0 when it is not one. */
static inline int bytes_of(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, len, &p, &ab, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = (uint8_t *)p;
  return 1;
}

/* The pointer behind an External, or NULL for anything else. */
static inline void *external_of(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

#endif
