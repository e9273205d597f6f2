import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';

/**
 * Kills, when this test process dies by any means (a runner timeout, SIGKILL), every process
 * whose command line contains `marker` (a temp folder path unique to the test): etcd members
 * and daemons spawned by a test would otherwise run on as orphans and slow every later test on
 * a small machine. A shell reads its standard input, which this process holds open; the read
 * ends when this process is gone, and then `pkill -f` removes what is left. A test that cleans
 * up normally leaves the reaper nothing to do. Needs `sh` and `pkill` (procps); without them
 * this is a no-op.
 */
export function reapWithThisProcess(marker: string): void {
  if (marker.length < 12) throw new Error('reaper marker too short to be unique');
  try {
    const child = spawn('/bin/sh', ['-c', 'read _ ; pkill -9 -f -- "$1" || true', 'reaper', marker], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
    child.on('error', () => undefined);
    child.unref();
    (child.stdin as unknown as Socket | null)?.unref?.();
  } catch {
    // no shell: nothing to guard with
  }
}
