/**
 * The save queues' retry rule, one source for the SQLite queue (save-queue.ts) and the PostgreSQL
 * one (pg-save-queue.ts); each only writes the decisions down in its own store.
 *
 * - A failed save is permanent (the job goes dead at once), transient (retried without limit and
 *   not counted), or neither (counted; the job goes dead after `maxFailures` of those). A retry
 *   waits a jittered exponential backoff by attempt.
 * - Transient failures from two different jobs in a row look like an outage: the whole queue
 *   pauses for a backoff that grows with the run of failures, so an outage costs one probe per
 *   interval. One job failing alone backs off by itself and pauses nobody. The first success
 *   after transient failures ends the pause, and the queue makes every waiting job due again.
 * - The metrics hooks (`onFailure`, `onDead`) are called from here; one that throws never breaks
 *   the queue.
 */
import { jitteredBackoff } from '../util/backoff';

/** The settings the rule reads (the queues' `QueueTuning` has them). */
export interface RetryRule {
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly maxFailures: number;
  readonly isTransient: (err: unknown) => boolean;
  readonly isPermanent: (err: unknown) => boolean;
  readonly random: () => number;
}

export interface RetryHooks {
  /** Every failed attempt (metrics counter). */
  onFailure?: ((err: unknown) => void) | undefined;
  /** Every job that went dead (metrics counter). */
  onDead?: ((jobId: string, error: string) => void) | undefined;
  /** Where a job that goes dead is reported (never with message text). */
  logger?: { warn(message: string, meta?: object): void } | undefined;
}

/** A claimed job's attempt that failed. */
export interface FailedAttempt {
  id: string;
  /** 1 for the first attempt. */
  attempt: number;
  /** Non-transient failures before this one. */
  hardFailures: number;
}

/** What the queue writes for a failed attempt. */
export type RetryVerdict = DeadVerdict | { outcome: 'retry'; error: string; hardFailures: number; retryInMs: number };
export interface DeadVerdict {
  outcome: 'dead';
  error: string;
  hardFailures: number;
  permanent: boolean;
}

const MAX_ERROR_CHARS = 2000;

/** An error as one bounded line for `last_error` and logs. */
export function errorText(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return text.length > MAX_ERROR_CHARS ? `${text.slice(0, MAX_ERROR_CHARS)}…` : text;
}

export class SaveRetries {
  private failureCount = 0;
  /** Transient failures in a row, the jobs they came from, and the pause they put on the whole queue. */
  private consecutiveTransient = 0;
  private readonly transientJobs = new Set<string>();
  private pausedUntil = 0;

  constructor(
    private readonly rule: RetryRule,
    private readonly hooks: RetryHooks = {},
  ) {}

  /** Failed attempts so far. */
  get failures(): number {
    return this.failureCount;
  }

  /** Milliseconds until the outage pause ends; 0 when the queue is not paused. */
  pausedFor(now = Date.now()): number {
    return Math.max(0, this.pausedUntil - now);
  }

  /** The delay before attempt `n + 1` (claims write it ahead, so a save cut off by a crash retries after it). */
  backoff(n: number): number {
    return jitteredBackoff(n, this.rule.baseDelayMs, this.rule.maxDelayMs, this.rule.random);
  }

  /** Classifies a failed attempt, counts it, and adds a transient one to the outage run. */
  failed(attempt: FailedAttempt, err: unknown, now = Date.now()): RetryVerdict {
    this.failureCount++;
    try {
      this.hooks.onFailure?.(err);
    } catch {
      // A metrics hook must not break the queue.
    }
    const permanent = this.rule.isPermanent(err);
    const transient = !permanent && this.rule.isTransient(err);
    const hardFailures = attempt.hardFailures + (transient ? 0 : 1);
    if (transient) {
      this.consecutiveTransient++;
      this.transientJobs.add(attempt.id);
      if (this.transientJobs.size >= 2) this.pausedUntil = now + this.backoff(this.consecutiveTransient);
    }
    const error = errorText(err);
    if (permanent || (!transient && hardFailures >= this.rule.maxFailures)) return { outcome: 'dead', error, hardFailures, permanent };
    return { outcome: 'retry', error, hardFailures, retryInMs: this.backoff(attempt.attempt) };
  }

  /** A save succeeded. True when it ended a run of transient failures: every waiting job is due now. */
  succeeded(): boolean {
    if (this.consecutiveTransient === 0) return false;
    this.consecutiveTransient = 0;
    this.transientJobs.clear();
    this.pausedUntil = 0;
    return true;
  }

  /**
   * The queue wrote a dead verdict down: logged, and counted by `onDead` when `recorded` (this
   * write ended the job; false when it had already ended elsewhere).
   */
  gaveUp(attempt: FailedAttempt, verdict: DeadVerdict, recorded: boolean): void {
    if (recorded) {
      try {
        this.hooks.onDead?.(attempt.id, verdict.error);
      } catch {
        // A metrics hook must not break the queue.
      }
    }
    this.hooks.logger?.warn('save queue gave up on a job (dead)', {
      job_id: attempt.id,
      attempts: attempt.attempt,
      permanent: verdict.permanent,
      error: verdict.error,
    });
  }
}
