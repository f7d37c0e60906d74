/**
 * A deadline on a promise: resolves or rejects like `promise`, or rejects with `onTimeout()` after
 * `ms`. The work itself keeps running (the engines we call take no abort signal); only the wait
 * ends. The timer never keeps the process alive.
 */
export function withDeadline<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
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
