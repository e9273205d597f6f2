import { execFile } from 'node:child_process';

/**
 * systemd readiness (sd_notify(3), unit Type=notify with NotifyAccess=all): when NOTIFY_SOCKET
 * is set, runs `systemd-notify --ready --pid=<our pid> --status=TEXT`, which sends
 * "READY=1\nMAINPID=...\nSTATUS=..." as one datagram to that socket (Node has no unix datagram
 * sockets). Bounded by a 5 s timeout; a failure is returned as false, never thrown: the daemon
 * runs without systemd too. `bin` is injectable for tests.
 */
export function notifyReady(env: NodeJS.ProcessEnv, status: string, bin = 'systemd-notify'): Promise<boolean> {
  const socket = env['NOTIFY_SOCKET'];
  if (!socket) return Promise.resolve(false);
  return new Promise((resolve) => {
    execFile(bin, ['--ready', `--pid=${process.pid}`, `--status=${status.slice(0, 200)}`], { timeout: 5000, env: { ...process.env, NOTIFY_SOCKET: socket } }, (err) => resolve(!err));
  });
}
