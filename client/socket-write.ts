import type { Socket } from 'node:net';

/**
 * Writes a session's output (client SDK and daemon alike): small output joined into one
 * buffer; output holding large pieces (stream chunks) as one vectored write, so a 64 KiB record
 * is not copied again.
 */
export function writePieces(socket: Socket, out: Buffer[]): void {
  if (out.length === 1) {
    socket.write(out[0]!);
    return;
  }
  let large = false;
  for (const b of out) if (b.length >= 16384) large = true;
  if (!large) {
    socket.write(Buffer.concat(out));
    return;
  }
  socket.cork();
  for (const b of out) socket.write(b);
  socket.uncork();
}
