/**
 * Membership (issue 14): every daemon holds a lease and a key `members/<node>` bound to it, with
 * its advertised client address and its state. When the server dies its key vanishes with the
 * lease. Drain marks (`drain/<node>`) are persistent: an operator sets them, the placement leader
 * moves the node's clubs away.
 */
import { ClusterError } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { checkNodeId, drainKey, DRAIN_PREFIX, memberKey, MEMBERS_PREFIX } from './keys.js';
import type { MemberLease } from './member-lease.js';

/** joining: catching up as a standby; active: may own clubs; draining: handing clubs away. */
export type MemberState = 'joining' | 'active' | 'draining';

export interface MemberInfo {
  id: string;
  /** Advertised HOST:PORT clients are redirected to. */
  address: string;
  state: MemberState;
  /** Wall-clock ms when the member registered. */
  since: number;
}

const ADDRESS = /^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})$/;

/** @throws ClusterError INVALID_ARGUMENT unless `address` is HOST:PORT with a port 1..65535. */
export function checkAddress(address: string): string {
  const m = ADDRESS.exec(address);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new ClusterError('INVALID_ARGUMENT', `advertised address ${JSON.stringify(address.slice(0, 80))} is not HOST:PORT`);
  return address;
}

function parseMember(raw: string): MemberInfo | undefined {
  try {
    const v = JSON.parse(raw) as MemberInfo;
    if (typeof v.id !== 'string' || typeof v.address !== 'string' || !['joining', 'active', 'draining'].includes(v.state) || typeof v.since !== 'number') return undefined;
    checkNodeId(v.id);
    checkAddress(v.address);
    return v;
  } catch {
    return undefined;
  }
}

export class Membership {
  private info: MemberInfo;

  constructor(
    private readonly gw: EtcdGateway,
    private readonly lease: MemberLease,
    self: { id: string; address: string; state?: MemberState },
  ) {
    this.info = { id: checkNodeId(self.id), address: checkAddress(self.address), state: self.state ?? 'joining', since: Date.now() };
  }

  get self(): MemberInfo {
    return { ...this.info };
  }

  /**
   * Write this member's key under its lease.
   * @throws ClusterError INVALID_ARGUMENT when another live server already uses this node id.
   */
  async register(): Promise<void> {
    this.lease.assertValid();
    const key = memberKey(this.info.id);
    const res = await this.gw.read('register member', () =>
      this.gw.kv
        .if(key, 'Create', '==', 0)
        .then(this.gw.kv.put(key).value(JSON.stringify(this.info)).lease(this.lease.id))
        .else(this.gw.kv.get(key))
        .commit(),
    );
    if (res.succeeded) return;
    const kv = res.responses[0]?.response_range?.kvs?.[0];
    if (kv && kv.lease === this.lease.id) return;
    throw new ClusterError('INVALID_ARGUMENT', `node id ${this.info.id} is already in use by a live server`);
  }

  /** Change this member's state (joining, active, draining). */
  async setState(state: MemberState): Promise<void> {
    this.lease.assertValid();
    this.info = { ...this.info, state };
    const key = memberKey(this.info.id);
    await this.gw.read('update member', () => this.gw.kv.if(key, 'Lease', '==', this.lease.id).then(this.gw.kv.put(key).value(JSON.stringify(this.info)).lease(this.lease.id)).commit());
  }

  /** Remove this member's key (clean stop); the lease is revoked by its owner. */
  async leave(): Promise<void> {
    const key = memberKey(this.info.id);
    await this.gw.read('leave', () => this.gw.kv.if(key, 'Lease', '==', this.lease.id).then(this.gw.kv.delete().key(key)).commit());
  }
}

/** Every live member, sorted by id. */
export async function listMembers(gw: EtcdGateway): Promise<MemberInfo[]> {
  const res = await gw.read('list members', () => gw.kv.getAll().prefix(MEMBERS_PREFIX).strings());
  return Object.values(res)
    .map(parseMember)
    .filter((m): m is MemberInfo => m !== undefined)
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Mark a node as drained (operator `cluster drain ID`), or clear the mark. */
export async function setDrain(gw: EtcdGateway, nodeId: string, drained: boolean): Promise<void> {
  const key = drainKey(nodeId);
  if (drained) await gw.read('drain', () => gw.kv.put(key).value('1').exec());
  else await gw.read('undrain', () => gw.kv.delete().key(key).exec());
}

/** Node ids an operator has marked drained. */
export async function listDrained(gw: EtcdGateway): Promise<string[]> {
  const keys = await gw.read('list drained', () => gw.kv.getAll().prefix(DRAIN_PREFIX).keys());
  return keys.map((k) => k.slice(DRAIN_PREFIX.length)).sort();
}
