/**
 * Deadlines on promises. The work itself keeps running (the engines we call take no abort
 * signal); only the wait ends. No timer here keeps the process alive.
 */

/** What `waitAtMost` resolves to when the time ran out first. */
export const TIMED_OUT: unique symbol = Symbol('timed out');

/**
 * Waits for `promise` at most `ms`: its value (or its rejection), or `TIMED_OUT` when the time ran
 * out first. For waits that are bounded but not failures (a drain at shutdown, a search budget).
 */
export function waitAtMost<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  return new Promise<T | typeof TIMED_OUT>((resolve, reject) => {
    const timer = setTimeout(() => resolve(TIMED_OUT), ms);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

/** Resolves or rejects like `promise`, or rejects with `onTimeout()` after `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  const result = await waitAtMost(promise, ms);
  if (result === TIMED_OUT) throw onTimeout();
  return result;
}
