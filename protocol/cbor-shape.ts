import { isUtf8 } from 'node:buffer';
import { ProtocolError } from './errors.js';

/**
 * Walks a CBOR item's headers without decoding it, iteratively, and refuses what our messages
 * never contain: nesting deeper than maxDepth, indefinite lengths, tags, reserved encodings,
 * lengths past the end of the input, text strings that are not well-formed UTF-8 (RFC 8949
 * section 3.1 requires UTF-8; a decoder that substitutes U+FFFD would hand handlers text the
 * client never sent), and trailing bytes. Run before the decoder so that no input can exhaust
 * its recursion or make it allocate.
 */
const bad = (why: string): never => {
  throw new ProtocolError('BAD_MESSAGE', `malformed CBOR: ${why}`);
};

/** Well-formed UTF-8: short ASCII text (most keys and names) is checked here without a native call. */
function validText(b: Uint8Array, from: number, len: number): boolean {
  if (len <= 64) {
    let i = from;
    const end = from + len;
    while (i < end && b[i]! < 0x80) i++;
    if (i === end) return true;
  }
  return isUtf8(b.subarray(from, from + len));
}

/**
 * The walk's stack, shared by every call (the walk is synchronous and not re-entrant), so that
 * checking a message allocates nothing; a deeper maxDepth than it holds gets a stack of its own.
 */
const SHARED_STACK = new Float64Array(64);

/**
 * Checks the CBOR item in b[start, end) (default: all of `b`): exactly one well-formed item
 * filling the range. Throws ProtocolError BAD_MESSAGE otherwise.
 */
export function checkCborShape(b: Uint8Array, maxDepth: number, start = 0, end = b.length): void {
  let pos = start;
  // remaining[i]: items still to read in the container at depth i; the root counts as one item.
  const remaining = maxDepth + 2 <= SHARED_STACK.length ? SHARED_STACK : new Float64Array(maxDepth + 2);
  remaining[0] = 1;
  let depth = 1;
  while (depth > 0) {
    if (remaining[depth - 1] === 0) {
      depth--;
      continue;
    }
    remaining[depth - 1]!--;
    if (pos >= end) bad('truncated');
    const ib = b[pos++]!;
    const major = ib >> 5;
    const ai = ib & 31;
    let value = 0;
    if (ai < 24) value = ai;
    else if (ai === 24 || ai === 25 || ai === 26 || ai === 27) {
      const n = 1 << (ai - 24);
      if (pos + n > end) bad('truncated header');
      for (let i = 0; i < n; i++) {
        value = value * 256 + b[pos + i]!;
      }
      pos += n;
    } else if (ai === 31) bad('indefinite length');
    else bad('reserved additional information');
    switch (major) {
      case 0:
      case 1:
        break;
      case 2:
      case 3:
        if (value > end - pos) bad('string past the end');
        if (major === 3 && value > 0 && !validText(b, pos, value)) bad('text is not valid UTF-8');
        pos += value;
        break;
      case 4:
      case 5: {
        const items = major === 4 ? value : value * 2;
        if (items > end - pos) bad('container larger than the input');
        if (depth > maxDepth) bad('nested too deeply');
        remaining[depth++] = items;
        break;
      }
      case 6:
        bad('tags are not used');
        break;
      case 7:
        // 20..22 false/true/null, 25..27 floats (already skipped above); no undefined or simple values.
        if (!(ai === 20 || ai === 21 || ai === 22 || ai === 25 || ai === 26 || ai === 27)) bad('unsupported simple value');
        break;
    }
  }
  if (pos !== end) bad('trailing bytes');
}
