/** The save queues' shared retry rule: verdicts, the outage pause, and guarded hooks. */
import { MemoryRejectedError, MemoryUnavailableError } from '../../src/errors';
import { errorText, SaveRetries, type RetryRule } from '../../src/memory/save-retry';

const rule: RetryRule = {
  baseDelayMs: 100,
  maxDelayMs: 1000,
  maxFailures: 3,
  isTransient: (err) => err instanceof MemoryUnavailableError,
  isPermanent: (err) => err instanceof MemoryRejectedError,
  random: () => 1, // no jitter: backoff(n) = min(1000, 100 · 2^(n−1))
};
const down = (): MemoryUnavailableError => new MemoryUnavailableError(true);
const NOW = 1_000_000;

describe('SaveRetries', () => {
  it('retries a transient failure without counting it, after the attempt’s backoff', () => {
    const retries = new SaveRetries(rule);
    expect(retries.failed({ id: 'a', attempt: 3, hardFailures: 2 }, down(), NOW)).toEqual({
      outcome: 'retry',
      error: 'MemoryUnavailableError: Memory service is temporarily unavailable',
      hardFailures: 2,
      retryInMs: 400,
    });
    expect(retries.failures).toBe(1);
  });

  it('counts other failures and gives up after maxFailures of them', () => {
    const retries = new SaveRetries(rule);
    expect(retries.failed({ id: 'a', attempt: 2, hardFailures: 1 }, new Error('bad'), NOW)).toMatchObject({
      outcome: 'retry',
      hardFailures: 2,
    });
    expect(retries.failed({ id: 'a', attempt: 3, hardFailures: 2 }, new Error('bad'), NOW)).toEqual({
      outcome: 'dead',
      error: 'Error: bad',
      hardFailures: 3,
      permanent: false,
    });
  });

  it('gives up at once on a permanent failure', () => {
    const verdict = new SaveRetries(rule).failed({ id: 'a', attempt: 1, hardFailures: 0 }, new MemoryRejectedError(), NOW);
    expect(verdict).toMatchObject({ outcome: 'dead', permanent: true, hardFailures: 1 });
  });

  it('pauses the queue once two different jobs fail transiently in a row, longer as the run grows, never for one job alone', () => {
    const retries = new SaveRetries(rule);
    for (let attempt = 1; attempt <= 4; attempt++) retries.failed({ id: 'a', attempt, hardFailures: 0 }, down(), NOW);
    expect(retries.pausedFor(NOW)).toBe(0);
    retries.failed({ id: 'b', attempt: 1, hardFailures: 0 }, down(), NOW);
    expect(retries.pausedFor(NOW)).toBe(1000); // fifth in a row: min(1000, 100 · 2^4)
    expect(retries.pausedFor(NOW + 600)).toBe(400);
    expect(retries.pausedFor(NOW + 5000)).toBe(0);
  });

  it('ends the pause on the first success after transient failures, and says so once', () => {
    const retries = new SaveRetries(rule);
    expect(retries.succeeded()).toBe(false);
    retries.failed({ id: 'a', attempt: 1, hardFailures: 0 }, down(), NOW);
    retries.failed({ id: 'b', attempt: 1, hardFailures: 0 }, down(), NOW);
    expect(retries.pausedFor(NOW)).toBeGreaterThan(0);
    expect(retries.succeeded()).toBe(true);
    expect(retries.pausedFor(NOW)).toBe(0);
    expect(retries.succeeded()).toBe(false);
    // A new run starts from one job again: one failing job does not pause.
    retries.failed({ id: 'c', attempt: 1, hardFailures: 0 }, down(), NOW);
    expect(retries.pausedFor(NOW)).toBe(0);
  });

  it('calls the hooks and logs a job it gives up on; a hook that throws changes nothing', () => {
    const seen: string[] = [];
    const warnings: object[] = [];
    const retries = new SaveRetries(rule, {
      logger: { warn: (message, meta) => warnings.push({ message, ...meta }) },
      onFailure: (err) => {
        seen.push(`failure ${errorText(err)}`);
        throw new Error('metrics broke');
      },
      onDead: (id, error) => {
        seen.push(`dead ${id} ${error}`);
        throw new Error('metrics broke');
      },
    });
    const attempt = { id: 'a', attempt: 1, hardFailures: 0 };
    const verdict = retries.failed(attempt, new MemoryRejectedError(), NOW);
    if (verdict.outcome !== 'dead') throw new Error('expected a dead verdict');
    retries.gaveUp(attempt, verdict, true);
    // Ended elsewhere already (another instance): logged, not counted again.
    retries.gaveUp(attempt, verdict, false);
    const error = 'MemoryRejectedError: The memory engine could not process this content';
    expect(seen).toEqual([`failure ${error}`, `dead a ${error}`]);
    expect(warnings).toEqual([
      { message: 'save queue gave up on a job (dead)', job_id: 'a', attempts: 1, permanent: true, error },
      { message: 'save queue gave up on a job (dead)', job_id: 'a', attempts: 1, permanent: true, error },
    ]);
  });

  it('keeps error text to one bounded line', () => {
    expect(errorText('plain')).toBe('plain');
    const long = errorText(new Error('x'.repeat(5000)));
    expect(long.length).toBe(2001);
    expect(long.endsWith('…')).toBe(true);
  });
});
