/**
 * A snapshot worker that dies on its first job (tests/backup-worker.test.ts): `crash` throws an
 * uncaught error in the worker, `exit` ends the worker thread with code 3.
 */
import { parentPort, workerData } from 'node:worker_threads';

parentPort?.on('message', () => {
  if ((workerData as { mode?: string } | undefined)?.mode === 'exit') process.exit(3);
  throw new Error('snapshot worker crashed on purpose');
});
