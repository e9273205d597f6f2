/*
 * The lifetime of the record layer's contexts (record_pool.h says why a pool): the pool of one
 * Node environment, the directions that take its slots, and the wiping of keys and key schedules
 * when a direction is destroyed or collected and when the environment ends.
 */
#include "record_pool.h"
#include <openssl/crypto.h>
#include <string.h>

static void unref_pool(pool_t *p) {
  if (--p->refs > 0) return;
  for (int i = 0; i < POOL_SIZE; i++) EVP_CIPHER_CTX_free(p->ctx[i]); /* cleanses the key schedule */
  OPENSSL_free(p);
}

static const uint8_t ZERO_KEY[KEY_LEN] = {0};

/* Overwrites a slot's key schedule with that of the zero key, so no key outlives its direction. */
static void scrub_slot(pool_t *p, int i) {
  p->owner[i] = NULL;
  if (p->ctx[i] != NULL) EVP_CipherInit_ex(p->ctx[i], NULL, NULL, ZERO_KEY, NULL, -1);
}

pool_t *pool_new(void) {
  pool_t *pool = (pool_t *)OPENSSL_zalloc(sizeof(pool_t));
  if (pool != NULL) pool->refs = 1;
  return pool;
}

void finalize_pool(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  pool_t *p = (pool_t *)data;
  for (int i = 0; i < POOL_SIZE; i++) {
    if (p->owner[i] != NULL) p->owner[i]->slot = -1;
    scrub_slot(p, i);
  }
  unref_pool(p);
}

direction_t *direction_new(pool_t *pool, const uint8_t key[KEY_LEN], const uint8_t iv[IV_LEN], int encrypt) {
  direction_t *d = (direction_t *)OPENSSL_zalloc(sizeof(direction_t));
  if (d == NULL) return NULL;
  d->pool = pool;
  d->slot = -1;
  d->live = 1;
  d->encrypt = encrypt;
  memcpy(d->key, key, KEY_LEN);
  memcpy(d->iv, iv, IV_LEN);
  pool->refs++;
  return d;
}

void wipe_direction(direction_t *d) {
  if (d->slot >= 0 && d->pool->owner[d->slot] == d) scrub_slot(d->pool, d->slot);
  d->slot = -1;
  d->live = 0;
  OPENSSL_cleanse(d->key, KEY_LEN);
  OPENSSL_cleanse(d->iv, IV_LEN);
}

void finalize_direction(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  direction_t *d = (direction_t *)data;
  pool_t *p = d->pool;
  wipe_direction(d);
  OPENSSL_free(d);
  unref_pool(p);
}
