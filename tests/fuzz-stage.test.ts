import assert from 'node:assert/strict';
import test from 'node:test';
import { runFuzz } from '../bench/fuzz-engine.js';

/**
 * The bounded fuzz stage of issue 18: a fixed seed and a few thousand frames of the socket-level
 * fuzzer (bench/fuzz-engine.ts) against a daemon in its own process, with every kind of case
 * (mutated hellos, mutated messages in valid records, payloads after a login, streams, record
 * tampering, ban checks). `npm run fuzz` is the long run with a random seed.
 */
test('fuzz stage: the daemon never exits, never answers INTERNAL, always answers or closes, and bans offenders', { timeout: 110_000 }, async () => {
  const lines: string[] = [];
  const r = await runFuzz({ frames: 3000, seed: 18, concurrency: 8, log: (l) => lines.push(l) });
  const why = (): string => `seed ${r.seed}\n${lines.slice(0, 60).join('\n')}`;
  assert.equal(r.daemonExited, false, why());
  assert.equal(r.errorCodes.INTERNAL ?? 0, 0, why());
  assert.deepEqual(r.failures, [], why());
  assert.ok(r.frames >= 3000, `${r.frames} frames`);
  for (const kind of ['hello', 'message', 'payload', 'stream', 'record', 'ban']) assert.ok((r.byKind[kind] ?? 0) > 0, `no ${kind} case ran: ${JSON.stringify(r.byKind)}`);
  assert.ok(r.banChecks > 0, 'offenders were checked for bans');
  assert.equal(r.bansMissed, 0);
  assert.ok((r.daemonStats?.bans ?? 0) > 0, 'the daemon banned offenders');
  assert.ok((r.errorCodes.BAD_REQUEST ?? 0) > 0, 'payloads reached the schemas');
});
