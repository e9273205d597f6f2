/*
 * The record layer's contexts (record_aead.c): each direction keeps only its key, IV and record
 * counter, and each thread a pool of POOL_SIZE keyed AES-256-GCM contexts that the directions take
 * in turn. record_pool.c holds their lifetime (creation of the pool, wiping, finalizers);
 * context_for() is here, inline, because every record calls it.
 *
 * Why a pool: a keyed AES-256-GCM context costs about 1.4 KiB of native memory (key schedule,
 * GHASH table, provider state), 2.7 KiB per connection if every direction kept one, against an
 * 8 KiB budget per idle connection (issue 13 point 3). A direction holds a pool slot until another
 * direction needs one (round robin); while it holds it, each record only sets its nonce (key
 * schedule once). Taking a slot runs the key schedule again, about 0.2 us. Active connections up
 * to POOL_SIZE / 2 therefore never re-key; 5,000 idle connections cost no contexts at all.
 */
#ifndef COMMUSIC_RECORD_POOL_H
#define COMMUSIC_RECORD_POOL_H
#include <node_api.h>
#include <openssl/evp.h>
#include <stdint.h>

#define KEY_LEN 32
#define IV_LEN 12

#define POOL_SIZE 64

struct pool;

typedef struct direction {
  struct pool *pool;
  int slot; /* index into pool->ctx and pool->owner, -1 when none */
  int live; /* 0 once destroyed */
  int encrypt;
  uint8_t key[KEY_LEN];
  uint8_t iv[IV_LEN];
  uint64_t seq;
} direction_t;

/* One per Node environment (main thread, each worker): contexts are never shared across threads. */
typedef struct pool {
  EVP_CIPHER_CTX *ctx[POOL_SIZE];
  direction_t *owner[POOL_SIZE];
  int next; /* round-robin victim */
  size_t refs; /* the environment plus each direction not yet finalized: whichever goes last frees */
} pool_t;

/* A new pool with the environment's reference, or NULL when out of memory. */
pool_t *pool_new(void);

/* The environment's end (napi_set_instance_data finalizer): slots scrubbed, its reference dropped. */
void finalize_pool(napi_env env, void *data, void *hint);

/* A new live direction in `pool` (which gains a reference), or NULL when out of memory. */
direction_t *direction_new(pool_t *pool, const uint8_t key[KEY_LEN], const uint8_t iv[IV_LEN], int encrypt);

/* Wipes key, IV and the key schedule of the slot it holds; the direction is dead from then on. */
void wipe_direction(direction_t *d);

/* A direction's External finalizer: wiped, freed, and its pool reference dropped. */
void finalize_direction(napi_env env, void *data, void *hint);

/* The keyed context for d: its own slot when it still holds it, else a new slot keyed for it. */
static inline EVP_CIPHER_CTX *context_for(direction_t *d) {
  pool_t *p = d->pool;
  if (d->slot >= 0 && p->owner[d->slot] == d) return p->ctx[d->slot];
  int i = p->next;
  p->next = (i + 1) % POOL_SIZE;
  if (p->ctx[i] == NULL) {
    p->ctx[i] = EVP_CIPHER_CTX_new();
    /* The cipher is looked up here, once per slot; records only set their nonce. */
    if (p->ctx[i] == NULL || EVP_CipherInit_ex(p->ctx[i], EVP_aes_256_gcm(), NULL, NULL, NULL, d->encrypt) != 1) {
      EVP_CIPHER_CTX_free(p->ctx[i]);
      p->ctx[i] = NULL;
      return NULL;
    }
  }
  if (p->owner[i] != NULL) p->owner[i]->slot = -1;
  p->owner[i] = NULL;
  if (EVP_CipherInit_ex(p->ctx[i], NULL, NULL, d->key, NULL, d->encrypt) != 1) return NULL;
  p->owner[i] = d;
  d->slot = i;
  return p->ctx[i];
}

#endif
