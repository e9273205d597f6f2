// Builds the record AEAD addon (crypto/native/record_aead.c, binding.gyp) at `npm ci` / `npm install`.
// node-gyp is told to use the headers of the node that runs this script (<prefix>/include/node,
// which include node's own OpenSSL headers), so no header download is attempted: CI has no
// network beyond the npm registry. The addon links against the OpenSSL inside that node binary.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const prefix = path.resolve(process.execPath, '..', '..');
const args = ['rebuild'];
if (!process.env.npm_config_nodedir && existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
// npm puts its own node-gyp on PATH for lifecycle scripts and names it in npm_config_node_gyp.
const gyp = process.env.npm_config_node_gyp;
const r = gyp ? spawnSync(process.execPath, [gyp, ...args], { stdio: 'inherit' }) : spawnSync('node-gyp', args, { stdio: 'inherit', shell: process.platform === 'win32' });
if (r.error) {
  console.error(`record AEAD addon: cannot run node-gyp: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
