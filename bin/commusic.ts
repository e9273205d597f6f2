#!/usr/bin/env node
import { Command } from 'commander';
import { connect, type Connection } from '../client/connection.js';
import { defaultKnownServersFile } from '../client/known-servers.js';
import { fail, parseHostPort, runMain } from './cli-util.js';
import { registerCallCommand } from './client-call.js';
import { safeJson } from '../daemon/neutralise.js';

interface Globals {
  server?: string;
  fingerprint?: string;
  tofu?: boolean;
  knownServers?: string;
  bind?: string;
  timeout: string;
}

const program = new Command('commusic')
  .description('ComMusic client command line')
  .option('--server <host:port>', 'server address (env COMMUSIC_SERVER)')
  .option('--fingerprint <sha256>', 'expected server key fingerprint (env COMMUSIC_FINGERPRINT)')
  .option('--tofu', 'trust the server key on first use and remember it in the known-servers file')
  .option('--known-servers <file>', 'known-servers file for --tofu', defaultKnownServersFile())
  .option('--bind <address>', 'local source address to connect from (multi-homed hosts)')
  .option('--timeout <ms>', 'connect and request timeout in milliseconds', '10000');

async function open(): Promise<Connection> {
  const g = program.opts<Globals>();
  const server = g.server ?? process.env.COMMUSIC_SERVER;
  if (!server) fail('--server HOST:PORT is required');
  const fingerprint = g.fingerprint ?? process.env.COMMUSIC_FINGERPRINT;
  if (!fingerprint && !g.tofu) fail('give --fingerprint (from "commusicctl keys show"), or --tofu to trust on first use');
  const { host, port } = parseHostPort(server);
  const timeout = Number(g.timeout);
  return connect({
    host,
    port,
    ...(fingerprint ? { fingerprint } : { knownServersFile: g.knownServers! }),
    connectTimeoutMs: timeout,
    requestTimeoutMs: timeout,
    ...(g.bind ? { localAddress: g.bind } : {}),
  });
}

program
  .command('ping')
  .description('handshake with the server and measure the round-trip time of a ping')
  .option('--count <n>', 'number of pings', '1')
  .option('--json', 'print JSON')
  .action(async (o: { count: string; json?: boolean }) => {
    const conn = await open();
    try {
      const times: number[] = [];
      for (let i = 0; i < Math.max(1, Number(o.count) || 1); i++) times.push(await conn.ping());
      if (o.json) process.stdout.write(`${JSON.stringify({ ok: true, fingerprint: conn.fingerprint, rttMs: times })}\n`);
      else for (const t of times) process.stdout.write(`pong from ${program.opts<Globals>().server ?? process.env.COMMUSIC_SERVER}: time=${t.toFixed(3)} ms\n`);
    } finally {
      await conn.close();
    }
  });

program
  .command('info')
  .description("show the server's name, version, protocol version and commands")
  .action(async () => {
    const conn = await open();
    try {
      const r = await conn.request('server.info', {});
      process.stdout.write(`${safeJson(r.payload, undefined, 2)}\n`);
    } finally {
      await conn.close();
    }
  });

registerCallCommand(program, open);

void runMain(() => program.parseAsync().then(() => undefined));
