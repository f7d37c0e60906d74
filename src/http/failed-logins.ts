/**
 * Failed logins per client address: past `perMinute` refused credentials in a minute, an address
 * is answered 429 at once (the credential is not even checked) until its minute is over, so nobody
 * can guess keys at the speed of the network or fill the log with refusals.
 *
 * Counted in this process (a fixed one-minute window per address) in a map bounded to
 * `maxAddresses`: when it is full the oldest window is dropped, so a flood of addresses costs
 * memory once, not per request. With a `shared` counter (Redis, several instances) each refusal is
 * also counted there, and the total it answers replaces this process's count: an address that
 * spreads its guesses over N instances is stopped after about `perMinute` + N, not N × `perMinute`.
 * The shared count is only written and read on a refusal, so a good credential never waits for it;
 * when it fails, the local count still applies.
 */

/** A counter of refusals per address shared by every instance. */
export interface SharedFailureCounter {
  /** Counts one refusal; resolves to the address's total in its window and the ms the window has left. */
  increment(address: string): Promise<{ count: number; remainingMs: number }>;
}

interface Window {
  startedAt: number;
  count: number;
}

export class FailedLogins {
  private readonly windows = new Map<string, Window>();

  constructor(
    readonly perMinute: number,
    private readonly options: { maxAddresses?: number; now?: () => number; shared?: SharedFailureCounter | undefined } = {},
  ) {}

  private get now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** Seconds until `address` may try again, or undefined when it may try now. */
  retryAfter(address: string): number | undefined {
    const window = this.current(address);
    if (!window || window.count < this.perMinute) return undefined;
    return Math.max(1, Math.ceil((window.startedAt + 60_000 - this.now) / 1000));
  }

  /**
   * Counts one refused credential from `address`. The returned promise settles once the shared
   * count (if any) has been merged in; callers need not wait for it.
   */
  record(address: string): Promise<void> {
    let window = this.current(address);
    if (window) {
      window.count++;
    } else {
      const maxAddresses = this.options.maxAddresses ?? 10_000;
      if (this.windows.size >= maxAddresses) {
        const oldest = this.windows.keys().next();
        if (!oldest.done) this.windows.delete(oldest.value);
      }
      window = { startedAt: this.now, count: 1 };
      this.windows.set(address, window);
    }
    const shared = this.options.shared;
    if (!shared) return Promise.resolve();
    return shared.increment(address).then(
      ({ count, remainingMs }) => {
        const local = this.windows.get(address) ?? window;
        if (count <= local.count) return;
        local.count = count;
        local.startedAt = this.now - (60_000 - Math.min(60_000, Math.max(0, remainingMs)));
        this.windows.set(address, local);
      },
      () => undefined, // The shared store is down: the local count applies.
    );
  }

  private current(address: string): Window | undefined {
    const window = this.windows.get(address);
    if (window && this.now - window.startedAt >= 60_000) {
      this.windows.delete(address);
      return undefined;
    }
    return window;
  }
}
