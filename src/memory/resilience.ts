/**
 * The failure policy every memory backend shares: deadlines, retries and a health state.
 *
 * `EngineGuard.read` / `write` run one engine call with a per-attempt deadline and up to three
 * attempts with exponential backoff, but only for transient failures (network errors, timeouts,
 * 429 and 5xx from the LLM, the embedder, the database or the Platform). Whatever still fails
 * becomes `MemoryUnavailableError(true)` ("temporarily unavailable"), except a content refusal by
 * the engine's model (400, 413 or 422: the text is too long for it, say), which becomes
 * `MemoryRejectedError` without touching the health state: the engine works, this content never
 * will. Our own `AppError`s (not found, bad request) pass through untouched and never count
 * against the engine.
 *
 * Writes are not retried after a timeout: the timed-out attempt may still finish in the
 * background, and a second one would store the memory twice.
 *
 * `available()` answers from a health state that every call outcome updates at once, and that a
 * cheap probe refreshes once it is older than a few seconds; so /health turns `degraded` on the
 * first failing call of an outage and recovers by itself once the probe succeeds again.
 */
import { AppError, BadRequestError, MemoryRejectedError, MemoryUnavailableError } from '../errors';
import { jitteredBackoff } from '../util/backoff';
import { withDeadline } from '../util/deadline';
import type { Logger } from '../logger';

/**
 * How a failure is handled: retried and counted (`transient`), counted only (`engine`), the
 * caller's fault (`caller`), or this content refused for good by the engine's model (`rejected`).
 */
export type FailureKind = 'transient' | 'engine' | 'caller' | 'rejected';

/** What a successful call shows: that the whole engine works, or only part of it. */
export type Proof = 'all' | 'part';

export interface GuardTuning {
  /** Deadline of one attempt of a read (search, list, get). */
  readTimeoutMs: number;
  /** Deadline of one attempt of a write (add with LLM extraction, delete). */
  writeTimeoutMs: number;
  /** Attempts per call, the first included. */
  attempts: number;
  /** Backoff before the second attempt; doubles each time, with jitter, up to maxDelayMs. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** How long a healthy state is trusted before the next probe. */
  healthyTtlMs: number;
  /** How long an unhealthy state is trusted before the next probe (short: recover quickly). */
  unhealthyTtlMs: number;
  /** Deadline of one probe. */
  probeTimeoutMs: number;
}

export const DEFAULT_GUARD_TUNING: Readonly<GuardTuning> = Object.freeze({
  readTimeoutMs: 10_000,
  writeTimeoutMs: 60_000,
  attempts: 3,
  baseDelayMs: 200,
  maxDelayMs: 2_000,
  healthyTtlMs: 5_000,
  unhealthyTtlMs: 2_000,
  probeTimeoutMs: 3_000,
});

/** An attempt that ran past its deadline. */
export class EngineTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what} timed out after ${ms} ms`);
    this.name = 'EngineTimeoutError';
  }
}

/**
 * Resolves or rejects like `promise`, or rejects with EngineTimeoutError after `ms`. The engine
 * call itself keeps running (mem0ai takes no abort signal); its own HTTP timeouts end it.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return withDeadline(promise, ms, () => new EngineTimeoutError(what, ms));
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
  // Postgres: connection failures and an administrator or crash shutdown.
  '08000',
  '08001',
  '08003',
  '08006',
  '57P01',
  '57P02',
  '57P03',
]);

const NETWORK_ERROR_NAMES = new Set([
  'APIConnectionError',
  'APIConnectionTimeoutError',
  'FetchError',
  'EngineTimeoutError',
  'NetworkError',
  'RateLimitError',
]);

function field(err: object, name: string): unknown {
  return (err as Record<string, unknown>)[name];
}

/** Whether an HTTP status means "try again later". */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

/** Statuses with which a model refuses the content itself (not the key, not the load). */
const CONTENT_REFUSALS = new Set([400, 413, 422]);

/** Whether `err` (or an error in its `cause` chain) is an HTTP answer refusing the content (400, 413, 422). */
export function isContentRefusal(err: unknown): boolean {
  let current: unknown = err;
  for (let depth = 0; depth < 6 && current !== null && typeof current === 'object'; depth++) {
    const status = field(current, 'status');
    if (typeof status === 'number') return CONTENT_REFUSALS.has(status);
    current = field(current, 'cause');
  }
  return false;
}

/** The default classification: transient, a content refusal, or an engine failure. */
export function classifyEngineError(err: unknown): FailureKind {
  if (isTransientError(err)) return 'transient';
  return isContentRefusal(err) ? 'rejected' : 'engine';
}

/**
 * Whether `err` (or an error in its `cause` chain) is a network failure, a timeout, or a 408/429/5xx
 * answer: worth another attempt. Works on the shapes the engines throw (openai SDK `APIError` with
 * `status`, undici's `fetch failed` with a coded cause, Node socket errors, pg error codes).
 */
export function isTransientError(err: unknown): boolean {
  let current: unknown = err;
  for (let depth = 0; depth < 6 && current !== null && typeof current === 'object'; depth++) {
    const status = field(current, 'status');
    if (typeof status === 'number' && isTransientStatus(status)) return true;
    const code = field(current, 'code');
    if (typeof code === 'string' && NETWORK_CODES.has(code)) return true;
    const name = field(current, 'name');
    if (typeof name === 'string' && NETWORK_ERROR_NAMES.has(name)) return true;
    const message = field(current, 'message');
    if (typeof message === 'string' && /^fetch failed$|socket hang up|Connection terminated/i.test(message)) return true;
    current = field(current, 'cause');
  }
  return false;
}

export interface EngineGuardOptions {
  /** Backend name, for logs. */
  backend: string;
  logger: Logger;
  /** Sorts a failure that is not an AppError; defaults to transient-or-engine. */
  classify?: (err: unknown) => FailureKind;
  /** A cheap call that succeeds only when the engine works (e.g. an embedding plus a store read). */
  probe: () => Promise<void>;
  tuning?: Partial<GuardTuning> | undefined;
  /** Told about every change of availability (metrics gauge). */
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  /** Clock and sleep, replaceable in tests. */
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

const defaultSleep = (ms: number): Promise<void> =>
  new Promise((resolve) => {
    setTimeout(resolve, ms).unref();
  });

/** Runs engine calls under the shared failure policy and keeps the health state. */
export class EngineGuard {
  readonly tuning: Readonly<GuardTuning>;
  private readonly classify: (err: unknown) => FailureKind;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  /** undefined until the first call or probe: the first `available()` then probes. */
  private healthy: boolean | undefined;
  private checkedAt = 0;
  private probing: Promise<boolean> | undefined;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly options: EngineGuardOptions) {
    this.tuning = Object.freeze({ ...DEFAULT_GUARD_TUNING, ...stripUndefined(options.tuning ?? {}) });
    this.classify = options.classify ?? classifyEngineError;
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? defaultSleep;
  }

  /**
   * A read: retried on any transient failure, timeouts included. `proves` says whether its success
   * shows the whole engine works (a search embeds and reads the store) or only part of it (a
   * listing reads the store alone): only the former may turn an unhealthy state healthy again.
   */
  read<T>(op: string, fn: () => Promise<T>, proves: Proof = 'all'): Promise<T> {
    return this.track(this.run(op, fn, this.tuning.readTimeoutMs, true, proves));
  }

  /** A write: retried on transient failures except timeouts (the attempt may still complete). */
  write<T>(op: string, fn: () => Promise<T>, proves: Proof = 'all'): Promise<T> {
    return this.track(this.run(op, fn, this.tuning.writeTimeoutMs, false, proves));
  }

  /** Cheap: the cached health state, refreshed by a probe once it is older than its TTL. */
  available(): Promise<boolean> {
    const ttl = this.healthy === true ? this.tuning.healthyTtlMs : this.tuning.unhealthyTtlMs;
    if (this.healthy !== undefined && this.now() - this.checkedAt < ttl) return Promise.resolve(this.healthy);
    this.probing ??= this.runProbe().finally(() => {
      this.probing = undefined;
    });
    return this.probing;
  }

  /** The health state as last observed, without probing (undefined before any call or probe). */
  known(): boolean | undefined {
    return this.healthy;
  }

  /** Records an outcome observed outside `read`/`write` (e.g. a start-up check). */
  record(ok: boolean, reason?: unknown): void {
    this.setHealth(ok, reason);
  }

  /** Waits (bounded) for calls still running, so stores are not closed under them. */
  async drain(maxWaitMs: number): Promise<void> {
    const pending = [...this.inFlight];
    if (this.probing) pending.push(this.probing);
    if (pending.length === 0) return;
    await withTimeout(Promise.allSettled(pending), maxWaitMs, 'drain').catch(() => undefined);
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.inFlight.add(promise);
    const forget = (): void => {
      this.inFlight.delete(promise);
    };
    promise.then(forget, forget);
    return promise;
  }

  private async run<T>(op: string, fn: () => Promise<T>, timeoutMs: number, retryOnTimeout: boolean, proves: Proof): Promise<T> {
    const { logger, backend } = this.options;
    let lastError: unknown;
    for (let attempt = 1; attempt <= this.tuning.attempts; attempt++) {
      try {
        const value = await withTimeout(Promise.resolve().then(fn), timeoutMs, `memory ${op}`);
        if (proves === 'all') this.setHealth(true);
        else if (this.healthy === true) this.checkedAt = this.now();
        return value;
      } catch (err) {
        if (err instanceof AppError) throw err;
        const kind = this.classify(err);
        if (kind === 'caller') {
          logger.debug('memory engine refused the request', { backend, op, err });
          throw new BadRequestError('The memory service rejected the request', 'The memory service rejected the request');
        }
        if (kind === 'rejected') {
          logger.warn('memory engine refused the content', { backend, op, err });
          throw new MemoryRejectedError();
        }
        lastError = err;
        const retryable = kind === 'transient' && (retryOnTimeout || !(err instanceof EngineTimeoutError));
        if (!retryable || attempt === this.tuning.attempts) break;
        const delay = this.backoff(attempt);
        logger.debug('memory engine call failed, retrying', { backend, op, attempt, delay_ms: delay, err });
        await this.sleep(delay);
      }
    }
    this.setHealth(false, lastError);
    logger.warn('memory engine call failed', { backend, op, err: lastError });
    throw new MemoryUnavailableError(true);
  }

  private backoff(attempt: number): number {
    return jitteredBackoff(attempt, this.tuning.baseDelayMs, this.tuning.maxDelayMs);
  }

  private async runProbe(): Promise<boolean> {
    try {
      await withTimeout(Promise.resolve().then(this.options.probe), this.tuning.probeTimeoutMs, 'memory probe');
      this.setHealth(true);
    } catch (err) {
      this.setHealth(false, err);
    }
    return this.healthy === true;
  }

  private setHealth(ok: boolean, reason?: unknown): void {
    const previous = this.healthy;
    this.healthy = ok;
    this.checkedAt = this.now();
    if (previous === ok) return;
    const { logger, backend } = this.options;
    if (ok) {
      if (previous === false) logger.info('memory engine healthy again', { backend });
    } else {
      logger.warn('memory engine unhealthy', { backend, err: reason });
    }
    this.options.onAvailabilityChange?.(ok);
  }
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
