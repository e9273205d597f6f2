/**
 * A primary for the takeover benchmark (bench/cluster.ts): grants a lease, acquires one club,
 * prints "owned", then appends without pause until it is killed with SIGKILL.
 * argv: endpoints (comma-separated) prefix clubId nodeId ttlSec
 */
import { randomBytes } from 'node:crypto';
import { ClubLog } from '../cluster/club-log.js';
import { ClusterError } from '../cluster/errors.js';
import { EtcdGateway } from '../cluster/etcd-gateway.js';
import { MemberLease } from '../cluster/member-lease.js';

async function main(): Promise<void> {
  const [endpoints, prefix, clubId, nodeId, ttl, keyHex] = process.argv.slice(2);
  if (!endpoints || !prefix || !clubId || !nodeId || !ttl || !keyHex) throw new Error('usage: cluster-child ENDPOINTS PREFIX CLUB NODE TTL KEYHEX');
  const gw = new EtcdGateway({ endpoints: endpoints.split(','), prefix });
  const lease = await MemberLease.grant(gw, { ttlSec: Number(ttl) });
  let log: ClubLog | undefined;
  while (!log) {
    try {
      log = await ClubLog.acquire({ gw, lease, nodeId, clubId, logKey: Buffer.from(keyHex, 'hex'), schema: 1 });
    } catch (e) {
      if (!(e instanceof ClusterError) || e.code !== 'NOT_OWNER') throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  process.stdout.write('owned\n');
  for (;;) await log.append(randomBytes(256));
}

main().catch((e: unknown) => {
  process.stderr.write(`cluster-child: ${(e as Error).message}\n`);
  process.exit(1);
});
