/** The `commusicctl` command tree, built at import; bin/commusicctl.ts runs it. Tests walk it. */
import { Command } from 'commander';
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
import { fail, newProgram, promptSecret, readSecretFile, usage } from './cli-util.js';
import { masterKeyNeedsPassphrase } from './passphrase.js';

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
program.hook('preAction', async () => {
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

registerBanCommands(program, dataDir, offline);
registerClubCommands(program, dataDir, offline);
registerClusterCommands(program, dataDir, offline);
registerKeyRotation(keys, dataDir, offline);
registerMonitorCommands(program, dataDir);
registerBackupCommands(program, dataDir, offline);
registerLogCommands(program, dataDir, offline);
registerCompletionCommand(program);

