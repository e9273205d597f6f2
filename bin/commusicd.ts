#!/usr/bin/env node
import { Command } from 'commander';
import { runDaemon } from '../daemon/main.js';
import { promptSecret, runMain } from './cli-util.js';
import { passphraseOption } from './ctl-clubs.js';
import type { OfflineOptions } from '../daemon/offline.js';

const program = new Command('commusicd')
  .description('ComMusic secure server daemon')
  .option('--data <dir>', 'data folder (default ./data, env COMMUSIC_DATA)')
  .option('--listen <host:port>', 'client protocol address (default 127.0.0.1:7443, env COMMUSIC_LISTEN)')
  .option('--health-listen <host:port>', 'HTTPS health and metrics endpoint (default 127.0.0.1:7444, env COMMUSIC_HEALTH_LISTEN)')
  .option('--web-listen <host:port>', 'HTTPS web application for club members (off unless given, env COMMUSIC_WEB_LISTEN)')
  .option('--config <file>', 'JSON configuration file')
  .option('--passphrase-fd <n>', 'read the master key passphrase from this file descriptor')
  .option('--log-level <level>', 'error, warn, info or debug')
  .action(async (o: { data?: string; listen?: string; healthListen?: string; webListen?: string; config?: string; logLevel?: string; passphraseFd?: string }) => {
    const start = (passphrase: OfflineOptions) =>
      runDaemon({
        ...passphrase,
        ...(o.config ? { file: o.config } : {}),
        env: process.env,
        flags: { ...(o.data ? { dataDir: o.data } : {}), ...(o.listen ? { listen: o.listen } : {}), ...(o.healthListen ? { healthListen: o.healthListen } : {}), ...(o.webListen ? { webListen: o.webListen } : {}), ...(o.logLevel ? { logLevel: o.logLevel } : {}) },
      });
    try {
      await start(passphraseOption(o.passphraseFd));
    } catch (e) {
      // A passphrase-protected master key and no --passphrase-fd: ask, when someone is there to answer.
      if ((e as { code?: string }).code !== 'PASSPHRASE_REQUIRED' || o.passphraseFd !== undefined || !process.stdin.isTTY) throw e;
      await start({ passphrase: await promptSecret('master key passphrase: ') });
    }
  });

void runMain(() => program.parseAsync().then(() => undefined));
