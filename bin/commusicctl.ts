#!/usr/bin/env node
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { generateIdentity, loadIdentity, saveIdentity } from '../crypto/identity.js';
import { dataPaths } from '../daemon/config.js';
import { openStorage } from '../storage/storage.js';
import { registerBanCommands } from './ctl-bans.js';
import { passphraseOption, registerClubCommands, registerKeyRotation } from './ctl-clubs.js';
import type { OfflineOptions } from '../daemon/offline.js';
import { registerMonitorCommands } from './ctl-monitor.js';
import { registerBackupCommands } from './ctl-backup.js';
import { registerLogCommands } from './ctl-log.js';
import { fail, runMain } from './cli-util.js';

const program = new Command('commusicctl')
  .description('ComMusic operator tool')
  .option('--data <dir>', 'data folder of the daemon (env COMMUSIC_DATA)', process.env.COMMUSIC_DATA ?? './data')
  .option('--passphrase-fd <n>', 'read the master key passphrase from this file descriptor');

function dataDir(): string {
  return resolve(program.opts<{ data: string }>().data);
}

let offlineOpts: OfflineOptions | undefined;
/** Read once: a descriptor can be read to its end only once. */
function offline(): OfflineOptions {
  offlineOpts ??= passphraseOption(program.opts<{ passphraseFd?: string }>().passphraseFd);
  return offlineOpts;
}

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
registerKeyRotation(keys, dataDir, offline);
registerMonitorCommands(program, dataDir);
registerBackupCommands(program, dataDir, offline);
registerLogCommands(program, dataDir, offline);

void runMain(() => program.parseAsync().then(() => undefined));
