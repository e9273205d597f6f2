/**
 * What every club command handler shares: the Guard (session to Principal, club check, right check,
 * 'rights' violations), the common payload schemas and the registration helper.
 */
import { z, type ZodTypeAny } from 'zod';
import { DataError, FILTER_OPS, MAX_CURSOR_LENGTH, type RowScope } from '../../storage/club/club-data.js';
import { StorageError } from '../../storage/engine/errors.js';
import { isOutOfMemory } from '../../storage/engine/sqlcipher.js';
import { MODEL, type EntityName } from '../../storage/club/model.js';
import { appendAudit, requirePrincipal, type ClubServices, type Principal } from './auth.js';
import { CommandError } from '../edge/command-errors.js';
import { ENTITY_AREA, type DataEntity } from './data-areas.js';
import type { CommandContext, CommandResult, Dispatcher } from '../edge/dispatcher.js';
import { currentKeyed, keepAnswerFor } from '../edge/keyed-answer.js';
import { effectiveScope, type Action, type Area, type Effective, type Grant } from './rights.js';

export const clubField = z.string().min(1).max(64).optional();
export const id = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const fieldName = z.string().min(1).max(64);
export const fieldsList = z.array(fieldName).min(1).max(64).optional();
const filterSchema = z.object({ field: fieldName, op: z.enum(FILTER_OPS), value: z.unknown().optional() }).strict();
export const listSchema = {
  filters: z.array(filterSchema).max(20).optional(),
  sort: z.array(z.object({ field: fieldName, dir: z.enum(['asc', 'desc']).optional() }).strict()).max(3).optional(),
  fields: fieldsList,
  club: clubField,
};
export const usernameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/, 'user names are 1..64 letters, digits, . _ @ -');
export const passwordSchema = z.string().min(12, 'passwords have at least 12 characters').max(1024);

// ---- helpers --------------------------------------------------------------------------------

/** The row scopes of a club-wide right, shared (RowScope values are never changed after creation). */
const ALL_ROWS: RowScope = Object.freeze({ kind: 'all' });
const ALL_ROWS_UNBLOCKED: RowScope = Object.freeze({ kind: 'all', hideBlocked: true });

/**
 * effectiveScope, remembered per grants list: a session's grants are one array per rights
 * version (session.ts grantsCache), so each (area, action) is worked out once per rights change
 * instead of several times per request. The Effective values are shared and never changed.
 */
const effectiveMemo = new WeakMap<readonly Grant[], Map<string, Effective | null>>();

export function effectiveOf(grants: readonly Grant[], area: Area, action: Action): Effective | undefined {
  let m = effectiveMemo.get(grants);
  if (!m) effectiveMemo.set(grants, (m = new Map()));
  const key = ACTION_KEYS[action] + area;
  let e = m.get(key);
  if (e === undefined) {
    e = effectiveScope(grants, area, action) ?? null;
    m.set(key, e);
  }
  return e ?? undefined;
}

const ACTION_KEYS: Readonly<Record<Action, string>> = { read: 'r:', create: 'c:', update: 'u:', delete: 'd:', export: 'e:' };

export class Guard {
  constructor(
    readonly services: ClubServices,
    readonly ctx: CommandContext,
    readonly command: string,
    readonly p: Principal,
  ) {}

  deny(right: string, detail = 'missing right'): never {
    this.services.violations.report({
      ip: this.ctx.conn.ip,
      kind: 'rights',
      detail,
      time: Date.now(),
      club: this.p.clubId,
      user: this.p.user.username,
      command: this.command,
      right,
    });
    throw new CommandError('FORBIDDEN', `you lack the right ${right}`);
  }

  report(right: string, detail: string): void {
    this.services.violations.report({ ip: this.ctx.conn.ip, kind: 'rights', detail, time: Date.now(), club: this.p.clubId, user: this.p.user.username, command: this.command, right });
  }

  /** Report a guessed id outside the caller's scope, answer as if it did not exist. */
  hidden(right: string, what: string): never {
    this.report(right, 'record outside scope');
    throw new CommandError('NOT_FOUND', `${what} does not exist`);
  }

  need(area: Area, action: Action): Effective {
    const e = effectiveOf(this.p.grants, area, action);
    if (!e) this.deny(`${area}:${action}`);
    return e;
  }

  /** Club-wide right (users, change log, exports): a narrower scope does not count. */
  needClub(area: Area, action: Action): void {
    const e = this.need(area, action);
    if (e.kind !== 'club') this.deny(`${area}:${action}`, 'club-wide right needed');
  }

  has(area: Area, action: Action): Effective | undefined {
    return effectiveOf(this.p.grants, area, action);
  }

  /** Whether the caller holds the dedicated right to read blocked persons (GDPR Art. 18). */
  readsBlocked(): boolean {
    return this.has('blockedPersons', 'read')?.kind === 'club';
  }

  /**
   * The rows an effective scope reaches. Blocked persons and the rows referring to them are
   * left out of writes and exports always, and of reads unless the caller holds
   * blockedPersons:read.
   */
  rowScope(e: Effective, entity: EntityName, mode: 'read' | 'write' | 'export' = 'write'): RowScope {
    const hideBlocked = mode !== 'read' || !this.readsBlocked();
    if (e.kind === 'club') return hideBlocked ? ALL_ROWS_UNBLOCKED : ALL_ROWS;
    let s: RowScope;
    if (MODEL[entity].registerScope.kind === 'none') s = { kind: 'none' };
    else if (e.kind === 'registers') s = { kind: 'registers', registers: [...e.registers], ...(e.own ? { personId: this.p.user.personId } : {}) };
    else s = { kind: 'person', personId: this.p.user.personId };
    return hideBlocked ? { ...s, hideBlocked: true } : s;
  }

  /**
   * The effective scopes that bound an entity's rows for an action: the entity's area, and for
   * attendance also persons:read (whether someone came is that person's data).
   * Undefined when a needed right is missing.
   */
  entityScopes(entity: DataEntity, action: Action): Effective[] | undefined {
    const e = this.has(ENTITY_AREA[entity] as Area, action);
    if (!e) return undefined;
    if (entity !== 'attendance') return [e];
    const pe = this.has('persons', 'read');
    return pe ? [e, pe] : undefined;
  }

  /** The row scope of an entity for an action, or undefined without the rights. */
  entityRowScope(entity: DataEntity, action: Action, mode: 'read' | 'write' | 'export'): RowScope | undefined {
    const es = this.entityScopes(entity, action);
    if (!es) return undefined;
    const [a, b] = es.map((e) => this.rowScope(e, entity, mode));
    return b ? { kind: 'both', a: a!, b, ...(a!.hideBlocked ? { hideBlocked: true } : {}) } : a;
  }

  /** Like entityRowScope, refusing (FORBIDDEN + violation) without the rights. */
  needEntity(entity: DataEntity, action: Action, mode: 'read' | 'write' | 'export'): { scope: RowScope; effective: Effective[] } {
    const area = ENTITY_AREA[entity] as Area;
    this.need(area, action);
    if (entity === 'attendance') this.need('persons', 'read');
    return { scope: this.entityRowScope(entity, action, mode)!, effective: this.entityScopes(entity, action)! };
  }
}

export function guard(services: ClubServices, ctx: CommandContext, command: string, payload: { club?: string | undefined }, o: { allowMustChange?: boolean } = {}): Guard {
  const p = requirePrincipal(services, ctx, o);
  const g = new Guard(services, ctx, command, p);
  if (payload.club !== undefined && payload.club !== p.clubId) g.deny(`club:${payload.club.slice(0, 64)}`, 'request for another club');
  return g;
}

export function dataError(g: Guard, e: unknown, right: string): never {
  if (e instanceof DataError) {
    if (e.code === 'OUT_OF_SCOPE') g.deny(right, e.message);
    if (e.code === 'NOT_FOUND') throw new CommandError('NOT_FOUND', e.message);
    if (e.code === 'CONFLICT') throw new CommandError('CONFLICT', e.message);
    throw new CommandError('BAD_REQUEST', e.message);
  }
  if (e instanceof StorageError) {
    if (e.code === 'VALIDATION_FAILED' || e.code === 'INVALID_ARGUMENT') throw new CommandError('BAD_REQUEST', e.message);
    if (e.code === 'DOC_NOT_FOUND') throw new CommandError('NOT_FOUND', 'the document does not exist');
    if (e.code === 'DOC_TOO_LARGE') throw new CommandError('TOO_LARGE', e.message);
    if (e.code === 'CLUB_EXISTS') throw new CommandError('CONFLICT', e.message);
  }
  // A sort or temporary table SQLite could not hold in memory (temporary storage is in memory: storage/engine/sqlcipher.ts).
  if (isOutOfMemory(e)) throw new CommandError('TOO_LARGE', 'the query needs more working memory than the server allows; narrow it with filters or fewer fields');
  throw e;
}

/**
 * Run a club write through its store's group commit (storage/club/write-group.ts): `work` runs
 * synchronously in the group's transaction (answer included) and the promise settles once the
 * group's commit is durable. A request that ended while it waited (CANCEL, its timeout, its
 * connection closed) is not applied. A store that cannot take the write now (too many waiting,
 * closed under it) answers BUSY: nothing was written, the client retries. The work returns the
 * command's answer; a keyed request's answer is stored with the change (daemon/edge/keyed-answer.ts).
 */
export function grouped<T extends CommandResult>(g: Guard, work: () => T): Promise<T> {
  // The work runs later, in the group's turn: the request key is taken now (daemon/edge/keyed-answer.ts).
  const k = currentKeyed();
  const run = () => {
    // Cancelled, timed out or its connection closed while it waited for its group: the client was
    // answered CANCELLED (or nothing), so the write must not happen either.
    if (g.ctx.signal.aborted) throw new CommandError('CANCELLED', 'the request ended before it was applied');
    // The answer of a keyed request is stored in the work's savepoint, with its change.
    return keepAnswerFor(k, g.p.store.db, work());
  };
  return g.p.store.writes.run(run).catch((e: unknown) => {
    if (e instanceof StorageError && e.code === 'STORE_BUSY') throw new CommandError('BUSY', 'the club store is busy; retry shortly');
    throw e;
  });
}

export function strictObject(shape: Record<string, ZodTypeAny>): z.ZodObject<Record<string, ZodTypeAny>, 'strict'> {
  return z.object(shape).strict();
}

/**
 * The schema of ENTITY.get, `{ id, fields?, club? }` strict, and its shortcut for the payloads
 * clients send on the hot path, `{ id }` and `{ id, club }`: returns exactly what the schema's parse
 * returns for them, and undefined for anything else (which then goes through zod as usual).
 * tests/prop-quick-payloads.test.ts checks the equivalence on random payloads.
 */
export const getSchema = strictObject({ id, fields: fieldsList, club: clubField });

export function quickGetPayload(p: unknown): { data: { id: number; club?: string } } | undefined {
  if (typeof p !== 'object' || p === null || Object.getPrototypeOf(p) !== Object.prototype) return undefined;
  const o = p as Record<string, unknown>;
  let n = 0;
  for (const k in o) {
    if (k !== 'id' && k !== 'club') return undefined;
    n++;
  }
  const v = o.id;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > Number.MAX_SAFE_INTEGER) return undefined;
  if (n === 1) return { data: { id: v } };
  const c = o.club;
  if (typeof c !== 'string' || c.length < 1 || c.length > 64) return undefined;
  return { data: { id: v, club: c } };
}

/**
 * The shortcut of ENTITY.update for its common payloads: `{ id, club?, <plain text fields> }`
 * where each text value is a string within the field's length, or null where the field is optional
 * (storage/club/model.ts `f.text`). Returns exactly what the schema's parse returns (same keys, in
 * the schema's order, which is the order the change log records them in); undefined for anything
 * else. `keys` are the schema's keys in order. Checked by tests/prop-quick-payloads.test.ts.
 */
export function quickUpdateParser(entity: EntityName, keys: readonly string[]): (p: unknown) => { data: Record<string, unknown> } | undefined {
  const text = new Map<string, { max: number; nullable: boolean }>();
  for (const k of keys) {
    const fd = MODEL[entity].fields[k];
    if (fd?.plainText && fd.maxLength !== undefined) text.set(k, { max: fd.maxLength, nullable: !fd.required });
  }
  return (p) => {
    if (typeof p !== 'object' || p === null || Object.getPrototypeOf(p) !== Object.prototype) return undefined;
    const o = p as Record<string, unknown>;
    let hasClub = false;
    for (const k in o) {
      if (k === 'id') continue;
      if (k === 'club') {
        hasClub = true;
        continue;
      }
      const t = text.get(k);
      if (!t) return undefined;
      const v = o[k];
      if (v === null ? !t.nullable : typeof v !== 'string' || v.length > t.max) return undefined;
    }
    const v = o.id;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > Number.MAX_SAFE_INTEGER) return undefined;
    if (hasClub) {
      const c = o.club;
      if (typeof c !== 'string' || c.length < 1 || c.length > 64) return undefined;
    }
    const data: Record<string, unknown> = {};
    for (const k of keys) if (k in o) data[k] = o[k];
    return { data };
  };
}

export function register(d: Dispatcher, name: string, schema: ZodTypeAny, handler: (p: any, ctx: CommandContext) => Promise<{ payload: unknown; download?: AsyncIterable<Uint8Array> }>, upload = false): void {
  d.register({ name, schema, ...(upload ? { upload: true } : {}), handler });
}

export function exportAudit(g: Guard, entity: string | null, detail: Record<string, unknown>): void {
  appendAudit(g.services, g.p.store, { ...g.p.actor, action: 'export', entity, recordId: null, changes: detail });
}

// ---- entity commands ------------------------------------------------------------------------

/** Keyset pagination (issue 21): a previous page's opaque `nextCursor`, with the same filters and sort. */
export const cursorField = z.string().min(1).max(MAX_CURSOR_LENGTH).regex(/^[A-Za-z0-9_-]+$/).optional().describe('opaque nextCursor of the previous page (same filters and sort); excludes offset');
