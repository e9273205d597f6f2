import { z } from 'zod';
import { MAX_CHUNK_LEN } from '../protocol/constants.js';
import type { Dispatcher } from './dispatcher.js';

/**
 * Commands every connection may use once the handshake is confirmed, before any login:
 * liveness, server identity, and a diagnostic echo stream (bounded by flow control, so it
 * amplifies nothing).
 */
export interface ServerInfo {
  name: string;
  version: string;
  protocolVersion: number;
  fingerprint: string;
}

export function registerCoreCommands(d: Dispatcher, info: () => ServerInfo, now: () => number = Date.now): void {
  d.register({
    name: 'ping',
    schema: z.object({ data: z.instanceof(Uint8Array).refine((b) => b.length <= MAX_CHUNK_LEN, 'data too large').optional() }).strict().default({}),
    handler: async (p) => ({ payload: p.data ? { time: now(), data: p.data } : { time: now() } }),
  });
  d.register({
    name: 'server.info',
    schema: z.object({}).strict().default({}),
    handler: async () => ({ payload: { ...info(), commands: d.names() } }),
  });
  d.register({
    name: 'diag.echoStream',
    schema: z.object({}).strict().default({}),
    upload: true,
    handler: async (_p, ctx) => ({ payload: {}, download: ctx.upload! }),
  });
}
