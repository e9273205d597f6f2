import { z } from 'zod';
import { MAX_CHUNK_LEN } from '../../protocol/constants.js';
import type { Dispatcher } from './dispatcher.js';
import { CommandError } from './command-errors.js';
import { describeApi, type ApiSchema } from './api-schema.js';

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

/** A plain object whose own enumerable keys are all in `allowed` (checked without allocating). */
function onlyKeys(p: unknown, allowed: string): p is Record<string, unknown> {
  if (typeof p !== 'object' || p === null || Object.getPrototypeOf(p) !== Object.prototype) return false;
  for (const k in p) if (k !== allowed) return false;
  return true;
}

/** What `z.object({}).strict().default({})` returns for `{}`, without going through zod. */
const emptyPayload = (p: unknown): { data: Record<string, never> } | undefined => (onlyKeys(p, '') && Object.keys(p).length === 0 ? { data: {} } : undefined);

/**
 * Registers ping, server.info and, only when `diag.echoStream` is true (config `diag.echoStream`,
 * default off), diag.echoStream: a command a production server has no use for is not offered.
 */
export function registerCoreCommands(d: Dispatcher, info: () => ServerInfo, now: () => number = Date.now, diag: { echoStream?: boolean } = {}): void {
  d.register({
    name: 'ping',
    // Data over MAX_CHUNK_LEN is a size limit (TOO_LARGE, PROTOCOL.md 6.2), not a malformed payload.
    schema: z.object({ data: z.instanceof(Uint8Array).describe(`at most ${MAX_CHUNK_LEN} bytes (more: TOO_LARGE)`).optional() }).strict().default({}),
    // The schema's result for the payloads clients send: {} or { data: bytes }.
    // The decoded payload itself is that result (a plain object made for this request alone).
    quickParse: (p) => {
      if (!onlyKeys(p, 'data') || ('data' in p && !(p.data instanceof Uint8Array))) return undefined;
      return { data: p as { data?: Uint8Array<ArrayBuffer> } };
    },
    // Synchronous: answered in the turn that read it, without a promise per ping.
    handler: (p) => {
      if (p.data && p.data.length > MAX_CHUNK_LEN) return Promise.reject(new CommandError('TOO_LARGE', `ping data is limited to ${MAX_CHUNK_LEN} bytes`));
      return { payload: p.data ? { time: now(), data: p.data } : { time: now() } };
    },
  });
  d.register({
    name: 'server.info',
    schema: z.object({}).strict().default({}),
    quickParse: emptyPayload,
    handler: async () => ({ payload: { ...info(), commands: d.names() } }),
  });
  // The API description (docs/API.md as data) is larger than one record: it travels as a
  // download stream of UTF-8 JSON. It is the same for every caller: built once, on first use.
  let schema: Buffer | undefined;
  d.register({
    name: 'server.schema',
    schema: z.object({}).strict().default({}),
    quickParse: emptyPayload,
    handler: async () => {
      schema ??= Buffer.from(JSON.stringify(describeApi(d) satisfies ApiSchema), 'utf8');
      const body = schema;
      async function* chunks(): AsyncIterable<Uint8Array> {
        for (let i = 0; i < body.length; i += MAX_CHUNK_LEN) yield body.subarray(i, i + MAX_CHUNK_LEN);
      }
      return { payload: { mediaType: 'application/json', size: body.length }, download: chunks() };
    },
  });
  if (!diag.echoStream) return;
  d.register({
    name: 'diag.echoStream',
    schema: z.object({}).strict().default({}),
    quickParse: emptyPayload,
    upload: true,
    handler: async (_p, ctx) => ({ payload: {}, download: ctx.upload! }),
  });
}
