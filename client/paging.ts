import { ClientError } from './errors.js';

/**
 * Following a list's continuation (PROTOCOL.md 7.4, "Answers cut by bytes"): a server answers a
 * list with as many items as fit one RESPONSE and a continuation for the rest, `nextCursor`
 * (pass back as `cursor`) or `nextAfterSeq` (pass back as `afterSeq`). A client that wants the
 * whole list pages until the continuation is null.
 */

/** Anything that sends a request and resolves its answer (Connection, ClusterClient). */
export interface Requester {
  request(command: string, payload: Record<string, unknown>): Promise<{ payload: unknown }>;
}

/** The most pages one walk follows before it gives up (a server that never ends a list). */
export const MAX_PAGES = 100_000;

/**
 * The continuation of an answer as the next request's fields, or undefined on the last page.
 * `nextCursor` wins over `nextOffset` (a cursor page costs the same at any depth).
 */
export function continuation(answer: unknown): { cursor: string } | { afterSeq: number } | undefined {
  const a = (answer ?? {}) as { nextCursor?: unknown; nextAfterSeq?: unknown };
  if (typeof a.nextCursor === 'string') return { cursor: a.nextCursor };
  if (typeof a.nextAfterSeq === 'number') return { afterSeq: a.nextAfterSeq };
  return undefined;
}

/**
 * Every page of a list command, first to last: the request is repeated with the previous
 * answer's continuation (and without `offset`) until there is none. Throws ClientError
 * PROTOCOL_ERROR when a server hands the same continuation twice in a row or passes MAX_PAGES.
 */
export async function* pages(client: Requester, command: string, payload: Record<string, unknown> = {}): AsyncGenerator<Record<string, unknown>> {
  let req: Record<string, unknown> = { ...payload };
  let last: string | undefined;
  for (let n = 0; ; n++) {
    if (n >= MAX_PAGES) throw new ClientError('PROTOCOL_ERROR', `${command}: more than ${MAX_PAGES} pages`);
    const answer = (await client.request(command, req)).payload as Record<string, unknown>;
    yield answer;
    const next = continuation(answer);
    if (!next) return;
    const key = JSON.stringify(next);
    if (key === last) throw new ClientError('PROTOCOL_ERROR', `${command}: the server handed the same continuation twice`);
    last = key;
    const { offset: _o, cursor: _c, afterSeq: _a, ...rest } = req;
    req = { ...rest, ...next };
  }
}

/**
 * The items of every page of a list command concatenated (`key`: the answer's list field,
 * `items` or `entries`), stopping once `max` items are gathered (then cut to `max`).
 */
export async function listAll<T = Record<string, unknown>>(client: Requester, command: string, payload: Record<string, unknown> = {}, key = 'items', max = Infinity): Promise<T[]> {
  const out: T[] = [];
  for await (const page of pages(client, command, payload)) {
    const items = page[key];
    if (!Array.isArray(items)) throw new ClientError('PROTOCOL_ERROR', `${command}: the answer has no ${key} list`);
    out.push(...(items as T[]));
    if (out.length >= max) {
      out.length = max;
      break;
    }
  }
  return out;
}
