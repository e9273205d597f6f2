import type { PeerKind, PeerObject, PeerPayload, PeerPullHandler, PeerPushHandler, PeerTransport } from '../../cluster/peer-types.js';

/**
 * An in-process stand-in for the peer channel (cluster/peer-types.ts) connecting ClusterNodes of
 * one test process: `pull(node, obj)` calls the handler that member registered. No network and no
 * byte checks of its own (the receivers verify what they get), so a test can also hand a receiver
 * altered payloads through `tamper`. `pulls` counts pulls per kind and target (tests check who
 * served a snapshot).
 */
export interface PeerHub {
  transport(nodeId: string): PeerTransport;
  /** Rewrites a payload on its way (tests of refusals); undefined: passed unchanged. */
  tamper: ((obj: PeerObject, p: PeerPayload) => PeerPayload) | undefined;
  /** Members that are "down" for the channel (pull answers with an error). */
  down: Set<string>;
  pulls: Array<{ from: string; to: string; kind: PeerKind; club: string; served: boolean }>;
}

export function createPeerHub(): PeerHub {
  const pullHandlers = new Map<string, Map<PeerKind, PeerPullHandler>>();
  const pushHandlers = new Map<string, Map<PeerKind, PeerPushHandler>>();
  const hub: PeerHub = {
    tamper: undefined,
    down: new Set(),
    pulls: [],
    transport(self) {
      return {
        async pull(node, obj) {
          if (hub.down.has(node)) throw new Error(`peer ${node} unreachable`);
          const h = pullHandlers.get(node)?.get(obj.kind);
          const p = h ? await h(obj) : undefined;
          hub.pulls.push({ from: self, to: node, kind: obj.kind, club: obj.club, served: p !== undefined });
          return p && hub.tamper ? hub.tamper(obj, p) : p;
        },
        async push(node, obj, payload) {
          if (hub.down.has(node)) throw new Error(`peer ${node} unreachable`);
          const h = pushHandlers.get(node)?.get(obj.kind);
          if (!h) throw new Error(`peer ${node} takes no ${obj.kind}`);
          await h(obj, payload);
        },
        onPull(kind, handler) {
          const m = pullHandlers.get(self) ?? new Map<PeerKind, PeerPullHandler>();
          m.set(kind, handler);
          pullHandlers.set(self, m);
        },
        onPush(kind, handler) {
          const m = pushHandlers.get(self) ?? new Map<PeerKind, PeerPushHandler>();
          m.set(kind, handler);
          pushHandlers.set(self, m);
        },
      };
    },
  };
  return hub;
}

/** Collect a payload's bytes (tests). */
export async function payloadBytes(p: PeerPayload): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of p.chunks) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** A payload of fixed bytes (tests). */
export function payloadOf(bytes: Buffer, size: number, sha256: string, meta: PeerPayload['meta']): PeerPayload {
  return {
    size,
    sha256,
    ...(meta ? { meta } : {}),
    chunks: (async function* () {
      for (let i = 0; i < bytes.length; i += 65536) yield bytes.subarray(i, i + 65536);
    })(),
  };
}
