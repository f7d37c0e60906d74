/**
 * Failed logins per client address: past `perMinute` refused credentials in a minute, an address
 * is answered 429 at once (the credential is not even checked) until its minute is over, so nobody
 * can guess keys at the speed of the network or fill the log with refusals.
 *
 * Counted in this process only (a fixed one-minute window per address), in a map bounded to
 * `maxAddresses`: when it is full the oldest window is dropped, so a flood of addresses costs
 * memory once, not per request.
 */
export class FailedLogins {
  private readonly windows = new Map<string, { startedAt: number; count: number }>();

  constructor(
    readonly perMinute: number,
    private readonly maxAddresses = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Seconds until `address` may try again, or undefined when it may try now. */
  retryAfter(address: string): number | undefined {
    const window = this.current(address);
    if (!window || window.count < this.perMinute) return undefined;
    return Math.max(1, Math.ceil((window.startedAt + 60_000 - this.now()) / 1000));
  }

  /** Counts one refused credential from `address`. */
  record(address: string): void {
    const window = this.current(address);
    if (window) {
      window.count++;
      return;
    }
    if (this.windows.size >= this.maxAddresses) {
      const oldest = this.windows.keys().next();
      if (!oldest.done) this.windows.delete(oldest.value);
    }
    this.windows.set(address, { startedAt: this.now(), count: 1 });
  }

  private current(address: string): { startedAt: number; count: number } | undefined {
    const window = this.windows.get(address);
    if (window && this.now() - window.startedAt >= 60_000) {
      this.windows.delete(address);
      return undefined;
    }
    return window;
  }
}
