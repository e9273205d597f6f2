import { MAGIC, MAGIC_LEN } from './constants.js';

/**
 * Recognises, from a connection's first bytes, whether a peer speaks our protocol or is some
 * other kind of traffic: the ban engine treats each kind as a violation, and the operator log
 * says which it was. Returns 'need-data' while the bytes so far are a prefix of our magic.
 */
export type FirstBytesVerdict = 'client' | 'need-data' | 'http' | 'tls' | 'ssh' | 'garbage';

const HTTP_METHODS = ['GET ', 'POST', 'HEAD', 'PUT ', 'DELE', 'OPTI', 'PATC', 'CONN', 'TRAC', 'PRI '];

export function classifyFirstBytes(data: Uint8Array): FirstBytesVerdict {
  const n = Math.min(data.length, MAGIC_LEN);
  let prefixOfMagic = true;
  for (let i = 0; i < n; i++) if (data[i] !== MAGIC[i]) prefixOfMagic = false;
  if (prefixOfMagic) return n === MAGIC_LEN ? 'client' : 'need-data';
  // TLS record header: handshake (22) and a 3.x legacy version.
  if (data[0] === 0x16 && (data.length < 2 || data[1] === 0x03)) return 'tls';
  const head = Buffer.from(data.subarray(0, 4)).toString('latin1');
  if (head.startsWith('SSH-') || (data.length < 4 && 'SSH-'.startsWith(head))) return 'ssh';
  if (HTTP_METHODS.some((m) => m.startsWith(head) || head.startsWith(m))) return 'http';
  return 'garbage';
}
