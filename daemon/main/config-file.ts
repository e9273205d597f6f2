import { LineCounter, parseDocument, isMap, isSeq, type Node } from 'yaml';
import { z } from 'zod';

/**
 * Reading the configuration file: YAML 1.2 (comments allowed; every JSON file is also YAML, so
 * the old JSON files read unchanged) through the `yaml` package, with positions kept so an
 * error names the line and column, and unknown settings get a "did you mean" suggestion.
 */
export interface ParsedConfigFile {
  raw: Record<string, unknown>;
  /** 1-based line and column of the setting at `path` (or of its nearest present parent). */
  locate(path: readonly (string | number)[]): { line: number; col: number } | undefined;
}

/** Thrown (as a plain Error with .line/.col) when the text is not valid YAML. */
export class ConfigSyntaxError extends Error {
  constructor(
    message: string,
    readonly line: number,
    readonly col: number,
  ) {
    super(message);
  }
}

/** Largest configuration file read (bytes). */
export const MAX_CONFIG_BYTES = 1024 * 1024;

export function parseConfigText(text: string): ParsedConfigFile {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const pos = lc.linePos(e.pos[0]);
    throw new ConfigSyntaxError(e.message.split('\n')[0]!, pos.line, pos.col);
  }
  const raw: unknown = doc.toJS({ maxAliasCount: 100 }) ?? {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigSyntaxError('the file must hold a mapping of settings (key: value)', 1, 1);
  return {
    raw: raw as Record<string, unknown>,
    locate(path) {
      let node: unknown = doc.contents;
      let at: Node | undefined = doc.contents ?? undefined;
      for (const k of path) {
        if (isMap(node)) {
          const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === k);
          if (!pair) break;
          at = (pair.key as Node) ?? at;
          node = pair.value;
        } else if (isSeq(node) && typeof k === 'number') {
          const item = node.items[k] as Node | undefined;
          if (!item) break;
          at = item;
          node = item;
        } else break;
      }
      const r = at?.range;
      if (!r) return undefined;
      const p = lc.linePos(r[0]);
      return { line: p.line, col: p.col };
    },
  };
}

/** Levenshtein distance, bounded inputs (setting names). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1));
  return d[a.length]![b.length]!;
}

/** The closest known name within a third of its length (at least 2 edits), if any. */
export function suggest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const dd = distance(name.slice(0, 64), k);
    if (dd < bestD) {
      bestD = dd;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(best.length / 3)) ? best : undefined;
}

/** Unwraps defaults, optionals, effects and nullables down to the schema that holds the value. */
export function unwrap(s: z.ZodTypeAny): z.ZodTypeAny {
  for (;;) {
    if (s instanceof z.ZodDefault) s = s._def.innerType;
    else if (s instanceof z.ZodOptional || s instanceof z.ZodNullable) s = s.unwrap();
    else if (s instanceof z.ZodEffects) s = s.innerType();
    else return s;
  }
}

/** The object keys the schema allows at `path` (empty when it is not an object there). */
export function keysAt(schema: z.ZodTypeAny, path: readonly (string | number)[]): string[] {
  let s = unwrap(schema);
  for (const k of path) {
    if (s instanceof z.ZodObject && typeof k === 'string') s = unwrap((s.shape as Record<string, z.ZodTypeAny>)[k] ?? z.never());
    else if (s instanceof z.ZodArray) s = unwrap(s.element);
    else if (s instanceof z.ZodRecord) s = unwrap(s.valueSchema);
    else return [];
  }
  return s instanceof z.ZodObject ? Object.keys(s.shape as object) : [];
}
