/**
 * The club list of `commusicctl club create-bulk FILE`: parsed and validated line by line, with
 * every error reported by line number before anything is created. Pure (text in, specs or
 * errors out); the CLI reads the file and runs the batches.
 *
 * Two formats, chosen by the first non-empty line:
 * - JSON lines: one object per line, `{"name": "MV Beispiel", "admin": "anna", "plan": "premium"}`
 *   (plan optional, default basic; no other keys);
 * - CSV (RFC 4180 quoting, one record per line): a header line naming the columns `name`,
 *   `admin` and optionally `plan`, in any order, then one club per line.
 * Empty lines and lines starting with `#` are skipped. No passwords in the file: every
 * administrator gets a one-time password.
 */
import { z } from 'zod';

/** Bounds of one file: MAX_BULK_BYTES of text, MAX_BULK_CLUBS clubs. */
export const MAX_BULK_BYTES = 10 * 1024 * 1024;
export const MAX_BULK_CLUBS = 10_000;
/** Clubs per control operation (one server-db transaction each; well below the 1 MiB control line). */
export const BULK_BATCH = 500;

export interface BulkClub {
  /** 1-based line of the file. */
  line: number;
  name: string;
  admin: string;
  plan: 'basic' | 'premium' | 'federation';
}

export interface BulkLineError {
  line: number;
  message: string;
}

export const bulkClubSchema = z
  .object({
    name: z.string().trim().min(1, 'empty').max(200, 'longer than 200 characters'),
    admin: z
      .string()
      .min(1, 'empty')
      .max(64, 'longer than 64 characters')
      .regex(/^[A-Za-z0-9][A-Za-z0-9._@-]*$/, 'letters, digits and . _ @ - only, starting with a letter or digit'),
    plan: z.enum(['basic', 'premium', 'federation']).default('basic'),
  })
  .strict();

/** Split one CSV record (RFC 4180 quoting; a record may not span lines). */
export function splitCsvLine(line: string): string[] {
  const out: string[] = [];
  let i = 0;
  for (;;) {
    let field = '';
    if (line[i] === '"') {
      i++;
      for (;;) {
        if (i >= line.length) throw new Error('unterminated quoted field');
        if (line[i] === '"') {
          if (line[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        field += line[i++];
      }
      if (i < line.length && line[i] !== ',') throw new Error('text after a closing quote');
    } else {
      const j = line.indexOf(',', i);
      field = j < 0 ? line.slice(i) : line.slice(i, j);
      if (field.includes('"')) throw new Error('a quote inside an unquoted field');
      i = j < 0 ? line.length : j;
    }
    out.push(field);
    if (i >= line.length) return out;
    i++; // the comma
  }
}

function firstIssue(e: z.ZodError): string {
  const f = e.issues[0]!;
  return f.path.length ? `${f.path.join('.')}: ${f.message}` : f.message;
}

/**
 * Parse and validate a club list. Returns the clubs, or every error found (at most 100, each
 * with its line); a list with any error creates nothing. Duplicate club names are errors too.
 */
export function parseClubList(text: string): { clubs: BulkClub[]; errors: BulkLineError[] } {
  const errors: BulkLineError[] = [];
  const clubs: BulkClub[] = [];
  if (Buffer.byteLength(text, 'utf8') > MAX_BULK_BYTES) return { clubs, errors: [{ line: 0, message: `the file is larger than ${MAX_BULK_BYTES} bytes` }] };
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  let format: 'jsonl' | 'csv' | undefined;
  let columns: string[] = [];
  const seen = new Map<string, number>();
  for (let k = 0; k < lines.length && errors.length < 100; k++) {
    const line = k + 1;
    const raw = lines[k]!;
    if (raw.trim() === '' || raw.trimStart().startsWith('#')) continue;
    let obj: unknown;
    if (format === undefined) {
      format = raw.trimStart().startsWith('{') ? 'jsonl' : 'csv';
      if (format === 'csv') {
        try {
          columns = splitCsvLine(raw).map((c) => c.trim().toLowerCase());
        } catch (e) {
          errors.push({ line, message: `header: ${(e as Error).message}` });
          break;
        }
        const unknown = columns.filter((c) => !['name', 'admin', 'plan'].includes(c));
        const dup = columns.filter((c, i) => columns.indexOf(c) !== i);
        if (!columns.includes('name') || !columns.includes('admin') || unknown.length || dup.length) {
          errors.push({ line, message: `header must name the columns name, admin and optionally plan (got ${columns.join(',')})` });
          break;
        }
        continue;
      }
    }
    if (format === 'jsonl') {
      try {
        obj = JSON.parse(raw);
      } catch {
        errors.push({ line, message: 'not a JSON object' });
        continue;
      }
      if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
        errors.push({ line, message: 'not a JSON object' });
        continue;
      }
    } else {
      let cells: string[];
      try {
        cells = splitCsvLine(raw);
      } catch (e) {
        errors.push({ line, message: (e as Error).message });
        continue;
      }
      if (cells.length !== columns.length) {
        errors.push({ line, message: `${cells.length} fields, the header has ${columns.length}` });
        continue;
      }
      const rec: Record<string, string> = {};
      columns.forEach((c, i) => {
        const v = cells[i]!.trim();
        if (!(c === 'plan' && v === '')) rec[c] = v;
      });
      obj = rec;
    }
    const r = bulkClubSchema.safeParse(obj);
    if (!r.success) {
      errors.push({ line, message: firstIssue(r.error) });
      continue;
    }
    const key = r.data.name.toLowerCase();
    const first = seen.get(key);
    if (first !== undefined) {
      errors.push({ line, message: `club name repeats line ${first}` });
      continue;
    }
    seen.set(key, line);
    if (clubs.length >= MAX_BULK_CLUBS) {
      errors.push({ line, message: `more than ${MAX_BULK_CLUBS} clubs in one file; split it` });
      break;
    }
    clubs.push({ line, ...r.data });
  }
  if (errors.length === 0 && clubs.length === 0) errors.push({ line: 0, message: 'the file lists no clubs' });
  return { clubs, errors };
}

/** The one-time password file: CSV with a header, one line per created club. */
export function formatPasswordFile(rows: ReadonlyArray<{ id: string; name: string; adminUser: string; plan: string; oneTimePassword?: string }>): string {
  const cell = (v: string) => {
    // A leading = + - @ would make a spreadsheet run the cell as a formula (OWASP "CSV Injection").
    const safe = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
    return /[",\r\n']/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
  };
  return ['id,name,admin,plan,one_time_password', ...rows.map((r) => [r.id, r.name, r.adminUser, r.plan, r.oneTimePassword ?? ''].map(cell).join(','))].join('\n') + '\n';
}
