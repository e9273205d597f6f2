#!/usr/bin/env node
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { generateIdentity, loadIdentity, saveIdentity } from '../crypto/identity.js';
import { dataPaths } from '../daemon/config.js';
import { registerBanCommands } from './ctl-bans.js';
import { registerMonitorCommands } from './ctl-monitor.js';
import { fail, runMain } from './cli-util.js';

const program = new Command('commusicctl')
  .description('ComMusic operator tool')
  .option('--data <dir>', 'data folder of the daemon (env COMMUSIC_DATA)', process.env.COMMUSIC_DATA ?? './data');

function dataDir(): string {
  return resolve(program.opts<{ data: string }>().data);
}

const keys = program.command('keys').description('server identity key');

keys
  .command('init')
  .description('create the RSA-2048 identity key (mode 0600) and print its fingerprint')
  .option('--json', 'print JSON')
  .action((o: { json?: boolean }) => {
    const path = dataPaths(dataDir()).identityKey;
    if (existsSync(path)) fail(`identity key ${path} already exists; "keys show" prints its fingerprint`);
    const identity = generateIdentity();
    saveIdentity(path, identity);
    if (o.json) process.stdout.write(`${JSON.stringify({ path, fingerprint: identity.fingerprint })}\n`);
    else process.stdout.write(`created ${path}\nfingerprint: ${identity.fingerprint}\n`);
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

registerBanCommands(program, dataDir);
registerMonitorCommands(program, dataDir);

void runMain(() => program.parseAsync().then(() => undefined));
