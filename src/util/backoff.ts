/** The one backoff formula: the engine guard's retries and both save queues' retries and pauses use it. */

/**
 * Exponential backoff with jitter: 50–100 % of min(max, base · 2^(n−1)), so the retries of many
 * callers spread out. `n` counts from 1.
 */
export function jitteredBackoff(n: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const step = Math.min(maxMs, baseMs * 2 ** Math.max(0, n - 1));
  return Math.round(step / 2 + (random() * step) / 2);
}
