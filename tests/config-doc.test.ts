import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MEANINGS, renderConfigDoc, settings } from '../daemon/main/config-doc.js';
import { loadConfig } from '../daemon/main/config.js';

/**
 * Issue 16 point 5: YAML configuration with comments (JSON still read), errors with line,
 * column and a suggestion, `commusicd --check-config`, and docs/CONFIG.md generated from the
 * schema: stale or incomplete fails here.
 */
const ROOT = new URL('../../', import.meta.url).pathname;
const BIN = new URL('../bin/', import.meta.url).pathname;

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(BIN, 'commusicd.js'), ...args], { timeout: 30_000, env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

test('docs/CONFIG.md is the generated reference, every setting has a meaning', () => {
  const paths = new Set(settings().map((r) => r.path.replace(/^bans\.kinds\.[A-Za-z]+\./, 'bans.kinds.<kind>.')));
  for (const p of paths) assert.ok(MEANINGS[p], `${p} has a meaning in daemon/main/config-doc.ts`);
  for (const p of Object.keys(MEANINGS)) assert.ok(paths.has(p), `${p} is still a setting`);
  assert.equal(readFileSync(join(ROOT, 'docs/CONFIG.md'), 'utf8'), renderConfigDoc(), 'docs/CONFIG.md is stale: npm run build && node dist/daemon/main/config-doc.js > docs/CONFIG.md');
});

test('--check-config: YAML with comments passes; a misspelt setting gives file:line:col and a suggestion; COMMUSIC_CONFIG is read', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-checkcfg-'));
  try {
    const good = join(dir, 'good.yaml');
    writeFileSync(good, `# ComMusic\ndataDir: ${join(dir, 'data')}\nlisten: 127.0.0.1:0  # any port\nlimits:\n  maxConnections: 50\n`);
    assert.equal(loadConfig({ file: good }).limits.maxConnections, 50);
    let r = await run(['--check-config', '--config', good]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /configuration OK \(.*good\.yaml\)/);
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, `# comment\nlisten: 127.0.0.1:0\nlimits:\n  # the next line is misspelt\n  maxConections: 50\n`);
    r = await run(['--check-config'], { COMMUSIC_CONFIG: bad });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad\.yaml:5:3: invalid configuration at limits\.maxConections: unknown setting "maxConections" \(did you mean "maxConnections"\?\)/);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
    r = await run(['--check-config', '--json', '--config', bad]);
    assert.equal(JSON.parse(r.stderr).error.code, 'CONFIG_INVALID');
    const wrongType = join(dir, 'type.yaml');
    writeFileSync(wrongType, `listen: 127.0.0.1:0\nbackups:\n  parallelism: many\n`);
    r = await run(['--check-config', '--config', wrongType]);
    assert.match(r.stderr, /type\.yaml:3:3: invalid configuration at backups\.parallelism/);
    const syntax = join(dir, 'syntax.yaml');
    writeFileSync(syntax, `listen: 127.0.0.1:0\nlimits: [unclosed\n`);
    r = await run(['--check-config', '--config', syntax]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /syntax\.yaml:\d+:\d+: not valid YAML or JSON/);
    const json = join(dir, 'old.json');
    writeFileSync(json, JSON.stringify({ listen: '127.0.0.1:0' }));
    r = await run(['--check-config', '--config', json]);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
