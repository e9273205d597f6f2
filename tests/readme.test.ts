import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Issue 16 point 1: the README's commands, pasted in order, work as written. Every ```sh block
 * after "Then, in another shell" runs in one bash (set -e), in a fresh folder, against a daemon
 * started as `npm start` starts it (embedded default, ./data). The documented substitutions:
 * `npx PROGRAM` runs the built dist/bin/PROGRAM.js (through PATH), port 7443 becomes the
 * daemon's port on 127.0.0.1:0, HOME is the fresh folder (the --tofu known-servers file).
 */
const ROOT = new URL('../../', import.meta.url).pathname;
const BIN = new URL('../bin/', import.meta.url).pathname;

export function readmeBlocks(text: string): string[] {
  const from = text.indexOf('Then, in another shell');
  assert.ok(from > 0, 'README marker');
  return [...text.slice(from).matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

test('README: the first-club commands run as written', { timeout: 180_000 }, async () => {
  const blocks = readmeBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'));
  assert.ok(blocks.length >= 2);
  const dir = mkdtempSync(join(tmpdir(), 'commusic-readme-'));
  const bindir = join(dir, '.bin');
  mkdirSync(bindir);
  for (const p of ['commusicd', 'commusicctl', 'commusic']) {
    chmodSync(join(BIN, `${p}.js`), 0o755);
    symlinkSync(join(BIN, `${p}.js`), join(bindir, p));
  }
  const daemon = spawn(process.execPath, [join(BIN, 'commusicd.js'), '--data', './data', '--listen', '127.0.0.1:0', '--health-listen', '127.0.0.1:0'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let out = '';
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`daemon did not start: ${out}`)), 60_000);
      daemon.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      daemon.on('exit', (c) => reject(new Error(`daemon exited ${c}`)));
    });
    const script = ['set -euo pipefail', 'npx() { "$@"; }', ...blocks.map((b) => b.replaceAll('7443', String(port)))].join('\n');
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile('bash', ['-c', script], { cwd: dir, timeout: 150_000, env: { ...process.env, PATH: `${bindir}:${process.env['PATH']}`, HOME: dir, COMMUSIC_DATA: '' } }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /pong from/);
    assert.match(r.stdout, /password changed/);
    assert.match(r.stdout, /anna in club c[0-9a-f]+ \(administrator\)/);
    assert.match(r.stdout, /created user bert/);
    assert.match(r.stdout, /SEQ +TIME +USER +ACTION/);
  } finally {
    daemon.kill('SIGTERM');
    await new Promise((r) => (daemon.exitCode !== null ? r(null) : daemon.once('exit', r)));
    rmSync(dir, { recursive: true, force: true });
  }
});
