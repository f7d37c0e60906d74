/**
 * Turns: one holder at a time; turns follow each other for up to a slice of a few ms, then the
 * next waits for the following turn of the event loop, so the I/O that arrived meanwhile (the
 * answers other holders wait for) is handled first.
 *
 * For CPU-bound prefixes of concurrent requests on one thread. When a burst of requests arrives
 * at once, the thread would otherwise run every request's prefix before any answer of the
 * network is read, and each request would finish only after the whole burst's prefixes: with
 * turns, the first ones finish after their own prefixes and round trip, the next a slice later,
 * and so on. A lone request takes its turn at once.
 */
export class Turns {
  private readonly waiting: Array<(release: () => void) => void> = [];
  /** Callers of `whenNoneWaiting`, told when the last waiting holder has started. */
  private readonly watchers: Array<() => void> = [];
  private held = false;
  /** When the first turn of this turn of the event loop started (undefined: none yet; a setImmediate resets it). */
  private sliceStart: number | undefined;

  /** `sliceMs`: how long turns may follow each other within one turn of the event loop before the next waits for the following one. */
  constructor(private readonly sliceMs = 4) {}

  /** Resolves with the release of the caller's turn when it starts; call the release exactly once (later calls do nothing). */
  take(): Promise<() => void> {
    if (!this.held && this.waiting.length === 0 && this.inSlice()) return Promise.resolve(this.start());
    return new Promise<() => void>((resolve) => this.waiting.push(resolve));
  }

  /** Whether a turn is held or holders wait: a caller now would not start at once. */
  get busy(): boolean {
    return this.held || this.waiting.length > 0;
  }

  /** Holders waiting for their turn (the current one not counted). */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Resolves once no holder is waiting for a turn, or after `maxWaitMs` (whichever comes first):
   * for work that should give way to the holders but never wait for good.
   */
  whenNoneWaiting(maxWaitMs: number): Promise<void> {
    if (this.waiting.length === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        const at = this.watchers.indexOf(done);
        if (at >= 0) this.watchers.splice(at, 1);
        resolve();
      };
      const timer = setTimeout(done, maxWaitMs);
      timer.unref();
      this.watchers.push(done);
    });
  }

  private inSlice(): boolean {
    return this.sliceStart === undefined || performance.now() - this.sliceStart < this.sliceMs;
  }

  private start(): () => void {
    this.held = true;
    if (this.sliceStart === undefined) {
      this.sliceStart = performance.now();
      setImmediate(() => {
        this.sliceStart = undefined;
        this.next();
      });
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held = false;
      this.next();
    };
  }

  private next(): void {
    if (this.held || !this.inSlice()) return;
    const waiter = this.waiting.shift();
    if (!waiter) return;
    waiter(this.start());
    if (this.waiting.length === 0) for (const watcher of [...this.watchers]) watcher();
  }
}
