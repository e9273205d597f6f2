/**
 * Pages cut by bytes (PROTOCOL.md 7, "Answers cut by bytes"): every command that answers a list
 * returns as many leading items as fit one RESPONSE and a continuation for the rest, never
 * TOO_LARGE for a valid request.
 */
import { MAX_ANSWER_PAYLOAD, cborSize, fitList } from '../../protocol/answer-size.js';
import { MAX_CURSOR_LENGTH } from '../../storage/club/club-data.js';
import { CommandError } from '../edge/command-errors.js';

/** Placeholders for continuation fields at their largest, so filling them in only shrinks the answer. */
export const LONGEST_CURSOR = 'x'.repeat(MAX_CURSOR_LENGTH);
export const LARGEST_INT = Number.MAX_SAFE_INTEGER;

/**
 * The most rows one answer can hold: the smallest list item (`{id: n}`) takes 5 bytes. Exports
 * without a stream read at most this many rows per answer.
 */
export const MAX_ROWS_PER_ANSWER = Math.ceil(MAX_ANSWER_PAYLOAD / 5);

/**
 * How many leading `items` fit one answer whose other fields are `fixed` (see fitList). An item
 * that alone exceeds the bound is TOO_LARGE (no record of the data model can: the largest is far
 * below 64 KiB).
 */
export function fitAnswer(items: readonly unknown[], fixed: Record<string, unknown>, max = MAX_ANSWER_PAYLOAD): number {
  const n = items.length ? fitList(items, fixed, max) : 0;
  if (items.length && n === 0) throw new CommandError('TOO_LARGE', 'a single item does not fit in one answer');
  return n;
}

/**
 * The bytes left in one answer while it is filled from several reads or several lists: start
 * with the answer's fixed part (`fixed`, continuation fields at their largest), then `take` each
 * batch of items. Array heads are counted at their largest (9 bytes), so the result may be a
 * little smaller than the bound, never larger.
 */
export class AnswerBudget {
  private left: number;
  private taken = 0;
  constructor(fixed: Record<string, unknown>, max = MAX_ANSWER_PAYLOAD) {
    this.left = max - cborSize(fixed);
  }

  /**
   * How many leading `items` still fit, after `overhead` bytes for their container (a map key
   * and an array head); their bytes are taken from the budget. TOO_LARGE when the answer is
   * still empty and not even the first item fits.
   */
  /** Takes `bytes` (a map key, an array head) when they fit; false when they do not. */
  room(bytes: number): boolean {
    if (bytes > this.left) return false;
    this.left -= bytes;
    return true;
  }

  take(items: readonly unknown[], overhead = 9): number {
    if (!items.length) return 0;
    let left = this.left - overhead;
    let n = 0;
    for (const it of items) {
      const s = cborSize(it);
      if (s > left) break;
      left -= s;
      n++;
    }
    if (n === 0 && this.taken === 0) throw new CommandError('TOO_LARGE', 'a single item does not fit in one answer');
    if (n > 0) this.left = left;
    this.taken += n;
    return n;
  }
}

/** The first `n` items (the array itself when all of them). */
export function firstN<T>(items: T[], n: number): T[] {
  return n >= items.length ? items : items.slice(0, n);
}

/**
 * An opaque cursor over a list ordered by one text key (users by user name): base64url of the
 * UTF-8 key. Not a capability: it only says where the next page starts.
 */
export function textCursor(key: string): string {
  return Buffer.from(key, 'utf8').toString('base64url');
}

/** The key a textCursor carries; BAD_REQUEST for anything that is not one. */
export function textCursorKey(cursor: string): Buffer {
  const b = Buffer.from(cursor, 'base64url');
  if (b.toString('base64url') !== cursor || b.length === 0) throw new CommandError('BAD_REQUEST', 'cursor is not one this list handed out');
  return b;
}

/**
 * An opaque cursor over an export that spans several lists (exports.club): the name of the list
 * to go on with and that list's own keyset cursor (null: from its start).
 */
export function partCursor(part: string, inner: string | null): string {
  return Buffer.from(JSON.stringify([part, inner]), 'utf8').toString('base64url');
}

/** Decodes a partCursor against the export's lists in order: the index to go on with. BAD_REQUEST for anything else. */
export function partCursorValue(cursor: string, parts: readonly string[]): { part: number; inner: string | null } {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    v = undefined;
  }
  const part = Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && (v[1] === null || typeof v[1] === 'string') ? parts.indexOf(v[0]) : -1;
  if (part < 0) throw new CommandError('BAD_REQUEST', 'cursor is not one this export handed out (or a right changed since)');
  return { part, inner: (v as [string, string | null])[1] };
}
