import { SERVER_ENV, SERVER_NODE_FLAGS } from '../bench/server-child.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

/**
 * Issue 16: deploy/Containerfile (building images is not possible here, so it is parsed):
 * multi-stage on node:20-slim, the runtime stage runs as a non-root user, the data folder is a
 * volume and the COMMUSIC_DATA it points the daemon to, a HEALTHCHECK on /healthz, and every
 * source folder the build compiles is copied in.
 */
interface Instr {
  op: string;
  args: string;
}

/** Instructions of a Containerfile: comments dropped, backslash continuations joined. */
export function parseContainerfile(text: string): Instr[] {
  const joined = text
    .split('\n')
    .filter((l) => !/^\s*#/.test(l))
    .join('\n')
    .replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const m = /^([A-Za-z]+)\s+(.*)$/.exec(l);
      assert.ok(m, `not an instruction: ${l}`);
      return { op: m[1]!.toUpperCase(), args: m[2]! };
    });
}

test('deploy/Containerfile: multi-stage node:20-slim, non-root USER, data VOLUME, HEALTHCHECK, sources copied', () => {
  const text = readFileSync(new URL('../../deploy/Containerfile', import.meta.url), 'utf8');
  const ins = parseContainerfile(text);
  const froms = ins.filter((i) => i.op === 'FROM');
  assert.ok(froms.length >= 2, 'multi-stage');
  for (const f of froms) assert.match(f.args, /node:20-slim/);
  const lastFrom = ins.lastIndexOf(froms[froms.length - 1]!);
  const runtime = ins.slice(lastFrom);
  const users = runtime.filter((i) => i.op === 'USER');
  assert.equal(users.length, 1, 'one USER in the runtime stage');
  const user = users[0]!.args.split(':')[0]!;
  assert.ok(!['root', '0', ''].includes(user), `USER ${user} is not root`);
  assert.ok(runtime.some((i) => i.op === 'RUN' && new RegExp(`useradd .*${user}`).test(i.args)), 'the user is created');
  // Nothing after USER switches back to root.
  assert.ok(runtime.slice(runtime.indexOf(users[0]!)).every((i) => i.op !== 'USER' || i === users[0]));
  const volume = runtime.find((i) => i.op === 'VOLUME');
  assert.ok(volume, 'a VOLUME');
  const volPath = (JSON.parse(volume.args) as string[])[0]!;
  const env = runtime.filter((i) => i.op === 'ENV').map((i) => i.args).join(' ');
  // The runtime settings the channel bench measures memory with (bench/server-child.ts).
  assert.ok(env.includes(`NODE_OPTIONS=${SERVER_NODE_FLAGS.join(' ')}`) && Object.entries(SERVER_ENV).every(([k, v]) => env.includes(`${k}=${v}`)), 'memory settings as in the bench');
  assert.match(env, new RegExp(`COMMUSIC_DATA=${volPath.replace(/\//g, '\\/')}\\b`), 'the daemon uses the volume as its data folder');
  assert.ok(runtime.some((i) => i.op === 'RUN' && i.args.includes(`-o ${user}`) && i.args.includes(volPath)), 'the volume folder belongs to the user');
  const hc = runtime.find((i) => i.op === 'HEALTHCHECK');
  assert.ok(hc && /\/healthz/.test(hc.args), 'a HEALTHCHECK on /healthz');
  assert.ok(runtime.some((i) => i.op === 'ENTRYPOINT' && i.args.includes('commusicd.js')));
  // The build stage copies every source folder tsconfig compiles for the programs.
  const copied = ins.filter((i) => i.op === 'COPY').map((i) => i.args.split(/\s+/)[0]);
  // Every source folder the build compiles (tsconfig.json "include"; tests and benchmarks aside):
  // a missing one (cluster/ was) breaks `npm run build` in the image.
  const tsconfig = JSON.parse(readFileSync(new URL('../../tsconfig.json', import.meta.url), 'utf8')) as { include: string[] };
  const sources = tsconfig.include.map((g) => g.split('/')[0]!).filter((d) => d !== 'tests' && d !== 'bench');
  assert.ok(sources.includes('cluster'));
  for (const dir of sources) assert.ok(copied.includes(dir), `COPY ${dir}`);
  // npm ci runs the install script that builds the record AEAD addon: its sources come first,
  // and the built addon goes into the runtime stage where dist/crypto/ looks for it.
  const npmCi = ins.findIndex((i) => i.op === 'RUN' && /\bnpm ci\b/.test(i.args));
  const before = ins.slice(0, npmCi).filter((i) => i.op === 'COPY').map((i) => i.args);
  assert.ok(before.some((a) => a.split(/\s+/).includes('binding.gyp')), 'binding.gyp before npm ci');
  assert.ok(before.some((a) => a.startsWith('crypto/native ')), 'crypto/native before npm ci');
  assert.ok(runtime.some((i) => i.op === 'COPY' && /record_aead\.node\s+\.\/build\/Release\/$/.test(i.args)), 'the addon in the runtime stage');
});
