import type { Socket } from 'node:net';
import { recycleRecords } from '../protocol/record-layer.js';

/**
 * Writes a session's output (client SDK and daemon alike): small output joined into one
 * buffer; output holding large pieces (stream chunks) as one vectored write, so a 64 KiB record
 * is not copied again. Once the socket has written them, the large record buffers go back to
 * the record layer's pool (recycleRecords), so streaming makes no fresh 64 KiB buffer per record.
 */
export function writePieces(socket: Socket, out: Buffer[]): void {
  if (out.length === 1) {
    const only = out[0]!;
    if (only.length >= 16384) socket.write(only, () => recycleRecords(out));
    else socket.write(only);
    return;
  }
  let large = false;
  for (const b of out) if (b.length >= 16384) large = true;
  if (!large) {
    socket.write(Buffer.concat(out));
    return;
  }
  socket.cork();
  const last = out.length - 1;
  for (let i = 0; i < last; i++) socket.write(out[i]!);
  // Writes complete in order: when the last one is done (or abandoned), all of them are.
  socket.write(out[last]!, () => recycleRecords(out));
  socket.uncork();
}
