/**
 * The record AEAD addon (crypto/native/record_aead.c) takes only its own contexts: they carry a
 * type tag (napi_type_tag_object, N-API 8) that every call checks, so an External made by another
 * addon, or any other value, is a TypeError instead of a pointer used as a context (memory
 * corruption). Before, any External was taken. The foreign External comes from a tiny addon
 * compiled here (needs cc and node's headers).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { recordCipherBackend } from '../crypto/record-cipher.js';
import { hasCc } from './helpers/keep-temp-shim.js';

const require = createRequire(import.meta.url);
const NODE_INCLUDE = resolve(process.execPath, '..', '..', 'include', 'node');
/** The built addon, from dist/tests/ (a computed path, as crypto/record-cipher.ts loads it). */
const ADDON = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'record_aead.node');

interface Aead {
  create(key: Uint8Array, iv: Uint8Array, encrypt: boolean): object;
  seal(dir: unknown, aad: Uint8Array, head: Uint8Array, tail: Uint8Array | undefined, out: Uint8Array, offset: number): number;
  open(dir: unknown, aad: Uint8Array, sealed: Uint8Array, out: Uint8Array, offset: number): number;
  openAt(dir: unknown, buf: Uint8Array, at: number, aadLen: number, sealedLen: number): number;
  sealAt(dir: unknown, rec: Uint8Array, aadLen: number, head: Uint8Array, tail: Uint8Array | undefined): number;
  sequence(dir: unknown): number;
  destroy(dir: unknown): void;
}

const FOREIGN = `#include <node_api.h>
static char area[4096];
static napi_value make(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_create_external(env, area, NULL, NULL, &out);
  return out;
}
NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "make", NAPI_AUTO_LENGTH, make, NULL, &fn);
  napi_set_named_property(env, exports, "make", fn);
  return exports;
}
`;

const skip = !hasCc ? 'no C compiler' : !existsSync(join(NODE_INCLUDE, 'node_api.h')) ? 'no node headers' : recordCipherBackend().impl !== 'native' ? 'the addon is not built' : false;

test('a foreign External or any other value is a TypeError, never used as a context', { skip }, () => {
  const aead = require(ADDON) as Aead;
  const dir = mkdtempSync(join(tmpdir(), 'commusic-foreign-'));
  try {
    writeFileSync(join(dir, 'foreign.c'), FOREIGN);
    const so = join(dir, 'foreign.node');
    const r = spawnSync('cc', ['-shared', '-fPIC', '-O1', `-I${NODE_INCLUDE}`, '-o', so, join(dir, 'foreign.c')], { encoding: 'utf8' });
    assert.equal(r.status, 0, `cc failed: ${r.stderr}`);
    const foreign = (require(so) as { make(): unknown }).make();
    const aad = new Uint8Array(8);
    const out = new Uint8Array(64);
    const wrong = (e: unknown) => e instanceof TypeError && (e as { code?: string }).code === 'ERR_AEAD_ARGS';
    for (const v of [foreign, {}, null, 1, 'ctx']) {
      assert.throws(() => aead.sequence(v), wrong, `sequence(${typeof v})`);
      assert.throws(() => aead.seal(v, aad, new Uint8Array(4), undefined, out, 0), wrong, `seal(${typeof v})`);
      assert.throws(() => aead.open(v, aad, new Uint8Array(20), out, 0), wrong, `open(${typeof v})`);
      assert.throws(() => aead.openAt(v, new Uint8Array(64), 0, 8, 20), wrong, `openAt(${typeof v})`);
      assert.throws(() => aead.sealAt(v, new Uint8Array(64), 8, new Uint8Array(4), undefined), wrong, `sealAt(${typeof v})`);
      assert.throws(() => aead.destroy(v), wrong, `destroy(${typeof v})`);
    }
    // Our own contexts still work, sealing and opening.
    const key = new Uint8Array(32).fill(7);
    const iv = new Uint8Array(12).fill(9);
    const s = aead.create(key, iv, true);
    const o = aead.create(key, iv, false);
    const n = aead.seal(s, aad, Buffer.from('hallo'), undefined, out, 0);
    const plain = new Uint8Array(16);
    assert.equal(aead.open(o, aad, out.subarray(0, n), plain, 0), 5);
    assert.equal(Buffer.from(plain.subarray(0, 5)).toString(), 'hallo');
    assert.equal(aead.sequence(s), 1);
    aead.destroy(s);
    aead.destroy(o);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the addon's own handshake keys and record contexts are never taken for each other", { skip: recordCipherBackend().impl !== 'native' ? 'the addon is not built' : false }, () => {
  // Both kinds are Externals of one addon (handshake_keys.c, record_aead.c): each side checks its
  // own type tag, so a signing key passed as a record context is a TypeError (the reverse: "not a
  // live Ed25519 key"), not
  // a key holder read as a direction (destroy() of one crashed the process before the tag).
  const aead = require(ADDON) as Aead & { pkeyGenerate(kind: number, pub: Uint8Array): object; ed25519Sign(key: unknown, msg: Uint8Array, out: Uint8Array): void };
  const ed = aead.pkeyGenerate(2, new Uint8Array(32));
  aead.ed25519Sign(ed, Buffer.from('x'), new Uint8Array(64));
  const wrong = (e: unknown) => e instanceof TypeError;
  const out = new Uint8Array(64);
  assert.throws(() => aead.sequence(ed), wrong);
  assert.throws(() => aead.seal(ed, new Uint8Array(5), new Uint8Array(4), undefined, out, 0), wrong);
  assert.throws(() => aead.openAt(ed, new Uint8Array(64), 0, 5, 20), wrong);
  assert.throws(() => aead.destroy(ed), wrong);
  const dir = aead.create(new Uint8Array(32).fill(1), new Uint8Array(12).fill(2), true);
  assert.throws(() => aead.ed25519Sign(dir, Buffer.from('x'), new Uint8Array(64)), /not a live Ed25519 key/);
  // the key still signs afterwards
  const sig = new Uint8Array(64);
  aead.ed25519Sign(ed, Buffer.from('x'), sig);
  assert.ok(sig.some((b) => b !== 0));
  aead.destroy(dir);
});
