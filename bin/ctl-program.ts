/** The `commusicctl` command tree, built at import; bin/commusicctl.ts runs it. Tests walk it. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { generateIdentity, loadIdentity, saveIdentity } from '../crypto/identity.js';
import { dataPaths } from '../daemon/main/config.js';
import { openStorage } from '../storage/server/storage.js';
import { registerBanCommands } from './ctl-bans.js';
import { registerClusterCommands } from './ctl-cluster.js';
import { passphraseOption, registerClubCommands, registerKeyRotation } from './ctl-clubs.js';
import type { OfflineOptions } from '../daemon/ops/offline.js';
import { registerMonitorCommands } from './ctl-monitor.js';
import { registerBackupCommands } from './ctl-backup.js';
import { registerLogCommands } from './ctl-log.js';
import { registerCompletionCommand } from './cli-docs.js';
import { fail, newProgram, printResult, promptSecret, readSecretFile, usage } from './cli-util.js';
import { masterKeyNeedsPassphrase } from './passphrase.js';
import { runOperation } from '../daemon/ops/offline.js';
import type { IdentityStatus } from '../crypto/identity-keyring.js';

export const program = newProgram('commusicctl', 'ComMusic operator tool')
  .option('--data <dir>', 'data folder of the daemon (env COMMUSIC_DATA)', process.env.COMMUSIC_DATA ?? './data')
  .option('--passphrase-fd <n>', 'read the master key passphrase from this file descriptor')
  .option('--passphrase-file <file>', 'read the master key passphrase from this file (first line)');

function dataDir(): string {
  return resolve(program.opts<{ data: string }>().data);
}

let offlineOpts: OfflineOptions | undefined;
/** Read once: a descriptor can be read to its end only once. */
function offline(): OfflineOptions {
  const g = program.opts<{ passphraseFd?: string; passphraseFile?: string }>();
  if (g.passphraseFd !== undefined && g.passphraseFile !== undefined) usage('give either --passphrase-fd or --passphrase-file, not both');
  offlineOpts ??= g.passphraseFile !== undefined ? { passphrase: readSecretFile(g.passphraseFile) } : passphraseOption(g.passphraseFd);
  return offlineOpts;
}

// A passphrase-protected master key, no daemon to route through, nothing given, a person at the
// terminal: ask once, without echo, before the command runs.
program.hook('preAction', async (_root, action) => {
  // The identity key rollover touches key files only, never the master key.
  if (action.parent?.name() === 'rotate-identity') return;
  const g = program.opts<{ passphraseFd?: string; passphraseFile?: string }>();
  if (offlineOpts || g.passphraseFd !== undefined || g.passphraseFile !== undefined || !process.stdin.isTTY) return;
  if (existsSync(dataPaths(dataDir()).controlSocket) || !masterKeyNeedsPassphrase(dataDir())) return;
  offlineOpts = { passphrase: await promptSecret('master key passphrase: ') };
});

const keys = program.command('keys').description('server identity key, master key and key rotation');

keys
  .command('init')
  .description('create the RSA-2048 identity key and the master key (both mode 0600) and print the fingerprint')
  .option('--json', 'print JSON')
  .action(async (o: { json?: boolean }) => {
    const path = dataPaths(dataDir()).identityKey;
    if (existsSync(path)) fail(`identity key ${path} already exists; "keys show" prints its fingerprint`);
    // The master key first: openStorage refuses to create one over existing data.
    const storage = await openStorage({ dataDir: dataDir(), create: true, ...offline() });
    const masterKeyId = storage.master.id;
    const protectedByPassphrase = storage.master.passphraseProtected;
    storage.close();
    const identity = generateIdentity();
    saveIdentity(path, identity);
    if (o.json) process.stdout.write(`${JSON.stringify({ path, fingerprint: identity.fingerprint, masterKeyId, passphraseProtected: protectedByPassphrase })}\n`);
    else process.stdout.write(`created ${path}\nfingerprint: ${identity.fingerprint}\nmaster key id: ${masterKeyId}${protectedByPassphrase ? ' (passphrase-protected)' : ''}\n`);
  });

keys
  .command('show')
  .description("print the identity key's SHA-256 fingerprint")
  .option('--json', 'print JSON')
  .action((o: { json?: boolean }) => {
    const path = dataPaths(dataDir()).identityKey;
    const identity = loadIdentity(path);
    if (o.json) process.stdout.write(`${JSON.stringify({ path, algorithm: 'RSA-2048', fingerprint: identity.fingerprint })}\n`);
    else process.stdout.write(`${identity.fingerprint}\n`);
  });

const rotateIdentity = keys
  .command('rotate-identity')
  .description(
    'roll the RSA-2048 identity key over without stale client pins, in four steps: start (a next key is created and announced to ' +
      'clients, signed by both keys; the current key still signs), switch (the next key signs handshakes; clients accept either), ' +
      'retire (the previous private key is deleted; its public key is kept so what it signed still verifies). Routine rotation only: ' +
      'a leaked key cannot be rolled over this way (docs/SECURITY.md)',
  );

type IdentityStep = { phase: string; current: string; next?: string; previous?: string; retired?: string; sessionsNotified?: number };
const stepText = (r: IdentityStep): string =>
  [
    `phase: ${r.phase}`,
    `signing key (handshakes, change-log heads, archives): ${r.current}`,
    ...(r.next ? [`next key (announced to clients): ${r.next}`] : []),
    ...(r.previous ? [`previous key (still accepted by clients): ${r.previous}`] : []),
    ...(r.retired ? [`retired key (private key deleted; public key kept for verification): ${r.retired}`] : []),
    ...(r.sessionsNotified !== undefined ? [`open sessions told: ${r.sessionsNotified}`] : []),
  ].join('\n');

for (const [step, what] of [
  ['start', 'create the next identity key (mode 0600) and the rotation statement signed by both keys; clients learn it at their next session (and open sessions at once)'],
  ['switch', 'sign handshakes with the next key from now on; clients that learned it accept it, the old key stays accepted until "retire"'],
  ['retire', 'delete the previous private key; clients drop it at their next session; its public key is kept for verifying old signatures'],
  ['abort', 'before "switch": delete the announced next key; clients drop it at their next session'],
] as const) {
  rotateIdentity
    .command(step)
    .description(what)
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { result } = await runOperation(dataDir(), 'keys.rotate-identity', { step }, {});
      printResult(result as IdentityStep, o.json, stepText);
    });
}

rotateIdentity
  .command('status')
  .description('the phase of an identity key rollover and every identity key: current, next, previous, and the retired ones kept for verification')
  .option('--json', 'print JSON')
  .action(async (o: { json?: boolean }) => {
    const { result } = await runOperation(dataDir(), 'keys.identity-status', {}, {});
    const r = result as IdentityStatus;
    printResult(r, o.json, (r) =>
      [
        `phase: ${r.phase}`,
        `signing key: ${r.signingKey}`,
        ...r.keys.map((k) => `${k.role.padEnd(8)} ${k.fingerprint}${k.retiredAt ? ` (retired ${k.retiredAt}, succeeded by ${k.successor})` : ''}`),
      ].join('\n'));
  });

registerBanCommands(program, dataDir, offline);
registerClubCommands(program, dataDir, offline);
registerClusterCommands(program, dataDir, offline);
registerKeyRotation(keys, dataDir, offline);
registerMonitorCommands(program, dataDir);
registerBackupCommands(program, dataDir, offline);
registerLogCommands(program, dataDir, offline);
registerCompletionCommand(program);

