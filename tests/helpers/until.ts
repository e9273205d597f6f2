/**
 * Waits for a condition, never for a time: `probe` is asked until it gives a value (not
 * undefined), which is returned; past `timeoutMs` (a bound far above what the condition needs,
 * not a timing assertion) it throws naming `what`. The pause between asks starts at `pauseMs`
 * (20 ms) and doubles up to `maxPauseMs` (by default the same: a steady 20 ms); the daemon-level
 * cluster tests let it grow to 250 ms so that a loaded machine is not flooded with status calls.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 30_000,
  { pauseMs = 20, maxPauseMs = pauseMs }: { pauseMs?: number; maxPauseMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let pause = pauseMs; ; pause = Math.min(pause * 2, maxPauseMs)) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pause));
  }
}
