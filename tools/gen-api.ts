/**
 * Generates docs/API.md from the command registry and the data model: `npm run docs:api`.
 * `apiMarkdown()` is also what tests/api-doc.test.ts compares the committed file with.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { basename, dirname, join } from 'node:path';
import { Dispatcher } from '../daemon/edge/dispatcher.js';
import { registerCoreCommands } from '../daemon/edge/core-commands.js';
import { registerClubCommands, type ClubServices } from '../daemon/club/club-commands.js';
import { registerBackupCommands } from '../daemon/backup/backup-commands.js';
import { describeApi, renderApiMarkdown, type ApiSchema } from '../daemon/edge/api-schema.js';

/**
 * A dispatcher with every command the daemon registers (daemon/main/main.ts and daemon/edge/server.ts).
 * Registration only reads the schemas; the services are never called, so none are given.
 */
export function fullRegistry(): Dispatcher {
  const d = new Dispatcher();
  registerClubCommands(d, {} as ClubServices);
  registerBackupCommands(d, {} as ClubServices);
  // diag.echoStream is off by default (config diag.echoStream) but documented: registered here.
  registerCoreCommands(d, () => ({ name: 'commusic-server', version: '', protocolVersion: 1, fingerprint: '' }), Date.now, { echoStream: true });
  return d;
}

export function apiSchema(): ApiSchema {
  return describeApi(fullRegistry());
}

export function apiMarkdown(): string {
  return renderApiMarkdown(apiSchema());
}

/** Path of docs/API.md from dist/tools/ or tools/. */
export function apiDocPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, basename(dirname(here)) === 'dist' ? '../..' : '..', 'docs', 'API.md');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(apiDocPath(), apiMarkdown());
  process.stdout.write(`wrote ${apiDocPath()}\n`);
}
