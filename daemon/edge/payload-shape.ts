import type { ZodTypeAny } from 'zod';

/**
 * Where a request payload has a value that is not a CBOR map in a place the command's schema
 * wants a map. zod (v3) classifies every non-array, non-null object as an "object", so a CBOR
 * byte string (decoded as a Uint8Array) would pass for a map: an empty one as `{}`, a long one
 * as an object with one key per byte. This walk runs before the schema and closes that gap for
 * the whole schema, at every depth (PROTOCOL.md section 6: "payloads are maps").
 */

/** A CBOR map as the message decoder returns it: a plain object (not an array, byte string or null). */
export function isCborMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === Object.prototype;
}

/** Neither a map nor a value zod could mistake for one (text, numbers, arrays, null...). */
function notObjectLike(v: unknown): boolean {
  return typeof v !== 'object' || v === null || Array.isArray(v);
}

const MAX_WALK_DEPTH = 32;

/**
 * Returns the dotted path of the first value that sits where `schema` expects a map
 * (z.object, z.record) but is an object of another kind (a byte string), or undefined when
 * there is none. Values of the wrong type otherwise are left to the schema, which reports them.
 * Unions count as wanting a map only when every option does.
 */
export function findMapConfusion(schema: ZodTypeAny, value: unknown, path: (string | number)[] = [], depth = 0): string | undefined {
  if (depth > MAX_WALK_DEPTH || value === undefined) return undefined;
  const def = (schema as { _def?: { typeName?: string } & Record<string, unknown> } | undefined)?._def;
  if (!def) return undefined;
  const at = (): string => path.join('.') || '(root)';
  switch (def.typeName) {
    case 'ZodObject': {
      if (notObjectLike(value)) return undefined;
      if (!isCborMap(value)) return at();
      const shape = (schema as unknown as { shape: Record<string, ZodTypeAny> }).shape;
      for (const k of Object.keys(value)) {
        // Own keys only: "constructor" or "toString" in a payload are not fields of the shape.
        if (!Object.prototype.hasOwnProperty.call(shape, k)) continue;
        const sub = shape[k]!;
        const hit = findMapConfusion(sub, value[k], [...path, k], depth + 1);
        if (hit !== undefined) return hit;
      }
      return undefined;
    }
    case 'ZodRecord': {
      if (notObjectLike(value)) return undefined;
      if (!isCborMap(value)) return at();
      const valueType = def.valueType as ZodTypeAny;
      for (const k of Object.keys(value)) {
        const hit = findMapConfusion(valueType, value[k], [...path, k], depth + 1);
        if (hit !== undefined) return hit;
      }
      return undefined;
    }
    case 'ZodArray': {
      if (!Array.isArray(value)) return undefined;
      for (let i = 0; i < value.length; i++) {
        const hit = findMapConfusion(def.type as ZodTypeAny, value[i], [...path, i], depth + 1);
        if (hit !== undefined) return hit;
      }
      return undefined;
    }
    case 'ZodTuple': {
      if (!Array.isArray(value)) return undefined;
      const items = def.items as ZodTypeAny[];
      for (let i = 0; i < Math.min(items.length, value.length); i++) {
        const hit = findMapConfusion(items[i]!, value[i], [...path, i], depth + 1);
        if (hit !== undefined) return hit;
      }
      return undefined;
    }
    case 'ZodOptional':
    case 'ZodNullable':
    case 'ZodDefault':
    case 'ZodCatch':
    case 'ZodReadonly':
      return findMapConfusion(def.innerType as ZodTypeAny, value, path, depth + 1);
    case 'ZodEffects':
      return findMapConfusion(def.schema as ZodTypeAny, value, path, depth + 1);
    case 'ZodBranded':
      return findMapConfusion(def.type as ZodTypeAny, value, path, depth + 1);
    case 'ZodPipeline':
      return findMapConfusion(def.in as ZodTypeAny, value, path, depth + 1);
    case 'ZodLazy':
      return findMapConfusion((def.getter as () => ZodTypeAny)(), value, path, depth + 1);
    case 'ZodIntersection':
      return findMapConfusion(def.left as ZodTypeAny, value, path, depth + 1) ?? findMapConfusion(def.right as ZodTypeAny, value, path, depth + 1);
    case 'ZodUnion':
    case 'ZodDiscriminatedUnion': {
      const options = (def.typeName === 'ZodUnion' ? def.options : [...(def.options as Iterable<ZodTypeAny>)]) as ZodTypeAny[];
      let first: string | undefined;
      for (const o of options) {
        const hit = findMapConfusion(o, value, path, depth + 1);
        if (hit === undefined) return undefined;
        first ??= hit;
      }
      return first;
    }
    default:
      return undefined;
  }
}
