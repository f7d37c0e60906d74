/**
 * Turns (src/util/turns.ts): one holder at a time; a burst of holders gives way to the event loop
 * every few milliseconds, so callbacks that became due meanwhile run between them.
 */
import { Turns } from '../../src/util/turns';

/** Keeps this thread busy for `ms` (a CPU-bound prefix). */
function burn(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // busy
  }
}

describe('Turns', () => {
  it('a lone caller starts at once; a second waits until the first releases', async () => {
    const turns = new Turns();
    const log: string[] = [];
    const first = await turns.take();
    expect(turns.busy).toBe(true);
    const second = turns.take().then((release) => {
      log.push('second');
      return release;
    });
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(log).toEqual([]);
    expect(turns.queued).toBe(1);
    first();
    first(); // a second release does nothing
    (await second)();
    expect(log).toEqual(['second']);
    expect(turns.busy).toBe(false);
  });

  it('in a burst of CPU-bound holders, a callback due meanwhile runs after a slice, not after the whole burst', async () => {
    const turns = new Turns(4);
    const log: string[] = [];
    const holders = Array.from({ length: 20 }, (_, i) =>
      turns.take().then((release) => {
        burn(2);
        log.push(`holder ${i}`);
        release();
      }),
    );
    // What a network answer arriving during the burst would be: a callback of the next loop turn.
    setImmediate(() => log.push('answer'));
    await Promise.all(holders);
    const at = log.indexOf('answer');
    // Holders of 2 ms in 4 ms slices: the answer waits for two or three of them, not twenty.
    expect(at).toBeGreaterThan(0);
    expect(at).toBeLessThanOrEqual(6);
    // Holders keep their order.
    expect(log.filter((l) => l !== 'answer')).toEqual(Array.from({ length: 20 }, (_, i) => `holder ${i}`));
  });

  it('holders that release at once all start within one slice when the burst is short', async () => {
    const turns = new Turns(50);
    let started = 0;
    let sawImmediate = false;
    setImmediate(() => {
      sawImmediate = true;
    });
    await Promise.all(
      Array.from({ length: 10 }, () =>
        turns.take().then((release) => {
          if (!sawImmediate) started++;
          release();
        }),
      ),
    );
    expect(started).toBe(10);
  });

  it('whenNoneWaiting resolves once the last waiting holder has started, or after its bound', async () => {
    const turns = new Turns(0);
    await expect(turns.whenNoneWaiting(1000)).resolves.toBeUndefined(); // nobody waits
    const first = await turns.take();
    const second = turns.take();
    let resolvedAt: number | undefined;
    const t0 = performance.now();
    const watching = turns.whenNoneWaiting(5000).then(() => {
      resolvedAt = performance.now() - t0;
    });
    await new Promise<void>((resolve) => setTimeout(resolve, 20));
    expect(resolvedAt).toBeUndefined();
    first();
    const releaseSecond = await second;
    await watching;
    expect(resolvedAt).toBeLessThan(1000);
    releaseSecond();

    // A holder that never releases: the watcher gives up after its bound.
    const stuck = await turns.take();
    void turns.take();
    const t1 = performance.now();
    await turns.whenNoneWaiting(50);
    expect(performance.now() - t1).toBeGreaterThanOrEqual(45);
    stuck();
  });
});
