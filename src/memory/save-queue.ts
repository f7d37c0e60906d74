/**
 * The durable save queue: chat exchanges waiting to be saved as memory, in one SQLite file under
 * DATA_DIR, so a memory outage, a crash or a restart loses none of them (contract §3.3).
 *
 * - `enqueue` is one synchronous INSERT OR IGNORE keyed by the request id: once it returns the
 *   exchange is on disk, and a replayed request id is ignored, also after its save completed
 *   (completed ids are kept, without their text, for `retentionMs`, 7 days by default).
 * - Workers (bounded concurrency) call the injected `save`. A failure is retried with exponential
 *   backoff and jitter. Transient failures (memory service down, timeouts) retry without limit,
 *   and also pause the whole queue for a growing interval, so an outage costs one probe per
 *   interval rather than a stream of doomed calls; the first success after an outage makes every
 *   waiting job due again, so the backlog drains as soon as the service is back. Other failures
 *   count, and a job that failed `maxFailures` times that way is kept in state 'dead' with its
 *   last error (never deleted) for an operator to look at; a permanent failure (the engine's model
 *   refused the content, or the user is at MEMORY_MAX_PER_USER) makes it dead at once. One job
 *   failing again and again never pauses the others: the queue pauses only once transient
 *   failures come from two different jobs in a row. (That rule, shared with the PostgreSQL queue,
 *   is save-retry.ts.)
 * - "In flight" is never stored: a claim increments `attempts` and moves `next_attempt_at` to the
 *   time of its retry in one write, and only memory knows the job runs. A process killed mid-save
 *   leaves a pending job that the next start picks up once that (short) backoff has passed. Saves
 *   are therefore at-least-once: a save cut off by a crash, by `saveTimeoutMs` or by `stop` may
 *   have reached the engine and runs again.
 * - No busy loop: one unref'd timer for the next due job (or the end of a pause), an immediate
 *   wake-up on enqueue, and the next claim when a save settles.
 *
 * Durability: WAL with synchronous=NORMAL by default. A commit is in the WAL file when `enqueue`
 * returns, so it survives the process being killed (the crash the contract names); only an OS
 * crash or power loss could lose the last commits. FULL would fsync on every enqueue, and
 * better-sqlite3 is synchronous, so every chat completion would stall the event loop for an fsync;
 * operators who need power-loss durability can choose it (`synchronous: 'FULL'`).
 *
 * One process owns a queue file at a time (like the other stores under DATA_DIR).
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { MemoryLimitError, MemoryRejectedError, MemoryUnavailableError } from '../errors';
import { waitAtMost, withDeadline } from '../util/deadline';
import { errorText, SaveRetries, type RetryRule } from './save-retry';
import type { ChatMessage, MemoryScope } from './types';

/** An exchange to save. `id` is the request id: the same id is only ever saved once. */
export interface SaveJob {
  id: string;
  scope: MemoryScope;
  messages: ChatMessage[];
  metadata: Record<string, unknown>;
}

/** What `save` is called with: the job and which attempt this is (1 for the first). */
export interface SaveAttempt extends SaveJob {
  readonly attempt: number;
}

export type SaveJobState = 'pending' | 'done' | 'dead';

/** A job's bookkeeping, for operators and tests (no message text). */
export interface SaveJobStatus {
  id: string;
  state: SaveJobState;
  attempts: number;
  /** Failures that were not transient (these count towards 'dead'). */
  hardFailures: number;
  lastError: string | null;
  nextAttemptAt: number;
  createdAt: number;
}

/** Minimal logger shape (a winston logger fits). Never given message text. */
export interface SaveQueueLogger {
  warn(message: string, meta?: object): void;
}

export interface SaveQueueOptions {
  /** SQLite file (its directory is created), e.g. `<DATA_DIR>/save-queue.db`. */
  path: string;
  /** Saves one exchange, e.g. `(job) => memory.add(job.scope, { messages, metadata, infer: true })`. */
  save: (job: SaveAttempt) => Promise<unknown>;
  /** Saves running at once (default 2). */
  concurrency?: number;
  /** First retry delay (default 1 s); doubles per attempt, jittered to 50–100 %. */
  baseDelayMs?: number;
  /** Longest retry delay and longest queue pause (default 5 min). */
  maxDelayMs?: number;
  /** Non-transient failures after which a job goes 'dead' (default 50). */
  maxFailures?: number;
  /**
   * Whether a failure is worth retrying without limit. Default (`isTransientSaveError`): every
   * `MemoryUnavailableError` (the memory service is down, failing, timing out, or not configured
   * yet) and a save that ran past `saveTimeoutMs`. The memory service's guard reports engine
   * trouble as unavailable too, so with it a poison job retries at the capped interval forever
   * rather than going dead: losing an exchange to an outage is the worse failure.
   */
  isTransient?: (err: unknown) => boolean;
  /**
   * Whether a failure can never succeed, so the job goes 'dead' at once (default: the engine's
   * model refused the content, `MemoryRejectedError`: e.g. an exchange too long for its context;
   * or the user is at the memory limit, `MemoryLimitError`).
   */
  isPermanent?: (err: unknown) => boolean;
  /** Told about every job that went 'dead' (metrics counter). */
  onDead?: (jobId: string, error: string) => void;
  /** A save running longer is given up (transient failure; it may still finish: at-least-once). Default 5 min. */
  saveTimeoutMs?: number;
  /** How long `stop` waits for running saves (default 10 s). */
  stopTimeoutMs?: number;
  /** How long completed ids are remembered to ignore replays (default 7 days). */
  retentionMs?: number;
  /** SQLite synchronous mode in WAL (default NORMAL; see the header). */
  synchronous?: 'NORMAL' | 'FULL';
  /**
   * Largest size of the queue file in bytes (default: no limit but the disk's). Past it `enqueue`
   * throws as it does on a full disk (SQLITE_FULL).
   */
  maxBytes?: number;
  /** Told the number of pending jobs whenever it changes (metrics gauge). */
  onDepth?: (depth: number) => void;
  /** Told about every failed attempt (metrics counter). */
  onFailure?: (err: unknown) => void;
  logger?: SaveQueueLogger;
  /** Random source for jitter (tests). */
  random?: () => number;
}

/** A save that ran past `saveTimeoutMs`. */
export class SaveTimeoutError extends Error {
  constructor(ms: number) {
    super(`save timed out after ${ms} ms`);
    this.name = 'SaveTimeoutError';
  }
}

/**
 * Default transient classification (see `SaveQueueOptions.isTransient`): the memory service being
 * unavailable, failing or never initialised (a restart with a fixed configuration saves the
 * backlog), and our own save deadline. Anything else counts towards 'dead'.
 */
export function isTransientSaveError(err: unknown): boolean {
  return err instanceof MemoryUnavailableError || err instanceof SaveTimeoutError;
}

/** The scheduling settings both queues share, with their defaults (see `SaveQueueOptions`); the retry rule's among them. */
export interface QueueTuning extends RetryRule {
  readonly concurrency: number;
  readonly saveTimeoutMs: number;
  readonly stopTimeoutMs: number;
  readonly retentionMs: number;
}

export function queueTuning(options: Omit<SaveQueueOptions, 'path' | 'save'>): QueueTuning {
  return {
    concurrency: Math.max(1, Math.floor(options.concurrency ?? 2)),
    baseDelayMs: options.baseDelayMs ?? 1000,
    maxDelayMs: options.maxDelayMs ?? 5 * 60 * 1000,
    maxFailures: Math.max(1, options.maxFailures ?? 50),
    saveTimeoutMs: options.saveTimeoutMs ?? 5 * 60 * 1000,
    stopTimeoutMs: options.stopTimeoutMs ?? 10_000,
    retentionMs: options.retentionMs ?? 7 * 24 * 60 * 60 * 1000,
    isTransient: options.isTransient ?? isTransientSaveError,
    isPermanent: options.isPermanent ?? ((err) => err instanceof MemoryRejectedError || err instanceof MemoryLimitError),
    random: options.random ?? Math.random,
  };
}

/**
 * What the chat path needs of a save queue: this file's SQLite queue (one instance, under
 * DATA_DIR) or the Postgres one shared by several (pg-save-queue.ts). `enqueue` has committed
 * when it returns (SQLite) or resolves (Postgres).
 */
export interface ExchangeQueue {
  enqueue(job: SaveJob): boolean | Promise<boolean>;
  start(): void;
  stop(): Promise<void>;
  /** Jobs waiting to be saved (on every instance, for a shared queue). */
  depth(): number;
  /** Failed save attempts of this process. */
  readonly failures: number;
  deadCount(): number;
  drained(timeoutMs: number): Promise<void>;
}

interface JobRow {
  id: string;
  user_id: string;
  agent_id: string | null;
  run_id: string | null;
  messages: string;
  metadata: string;
  attempts: number;
  hard_failures: number;
}

interface StatusRow {
  id: string;
  state: SaveJobState;
  attempts: number;
  hard_failures: number;
  last_error: string | null;
  next_attempt_at: number;
  created_at: number;
}

/** A claimed job: what `save` gets, plus what its bookkeeping needs. */
interface Claimed {
  job: SaveAttempt;
  hardFailures: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS save_jobs (
  id              TEXT PRIMARY KEY NOT NULL,
  user_id         TEXT NOT NULL,
  agent_id        TEXT,
  run_id          TEXT,
  messages        TEXT NOT NULL,
  metadata        TEXT NOT NULL,
  state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
  attempts        INTEGER NOT NULL DEFAULT 0,
  hard_failures   INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  last_error      TEXT,
  created_at      INTEGER NOT NULL,
  updated_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS save_jobs_due ON save_jobs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS save_jobs_updated ON save_jobs (state, updated_at);
`;

const MAX_TIMER_MS = 2 ** 31 - 1;
const PRUNE_EVERY_MS = 60 * 60 * 1000;

export class SaveQueue implements ExchangeQueue {
  private readonly db: Database.Database;
  private readonly save: (job: SaveAttempt) => Promise<unknown>;
  private readonly tuning: QueueTuning;
  private readonly stmt: {
    insert: Database.Statement<[string, string, string | null, string | null, string, string, number, number, number]>;
    due: Database.Statement<[number, string], JobRow>;
    claim: Database.Statement<[number, number, string]>;
    nextDue: Database.Statement<[string], { at: number | null }>;
    done: Database.Statement<[number, string]>;
    retry: Database.Statement<[number, string, number, number, string]>;
    dead: Database.Statement<[string, number, number, string]>;
    pullForward: Database.Statement<[number, number, number, string]>;
    count: Database.Statement<[SaveJobState], { n: number }>;
    prune: Database.Statement<[number]>;
    status: Database.Statement<[string], StatusRow>;
  };

  /** Pending jobs (in flight included), kept in step with every write of this process. */
  private pending: number;
  private readonly retries: SaveRetries;
  private running = false;
  private closed = false;
  /** Jobs whose save runs now, with the promise that settles after their bookkeeping. */
  private readonly inFlight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private lastPrune = 0;
  private waiters: Array<() => void> = [];

  constructor(private readonly options: SaveQueueOptions) {
    this.save = options.save;
    this.tuning = queueTuning(options);
    this.retries = new SaveRetries(this.tuning, options);

    fs.mkdirSync(path.dirname(path.resolve(options.path)), { recursive: true });
    this.db = new Database(options.path);
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma(`synchronous = ${options.synchronous === 'FULL' ? 'FULL' : 'NORMAL'}`);
      this.db.pragma('busy_timeout = 5000');
      if (options.maxBytes !== undefined) {
        const pageSize = Number(this.db.pragma('page_size', { simple: true }));
        this.db.pragma(`max_page_count = ${Math.max(1, Math.floor(options.maxBytes / pageSize))}`);
      }
      this.db.exec(SCHEMA);
      const notInFlight = 'id NOT IN (SELECT value FROM json_each(?))';
      this.stmt = {
        insert: this.db.prepare(
          `INSERT OR IGNORE INTO save_jobs (id, user_id, agent_id, run_id, messages, metadata, state, attempts, hard_failures, next_attempt_at, last_error, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, NULL, ?, ?)`,
        ),
        due: this.db.prepare(
          `SELECT id, user_id, agent_id, run_id, messages, metadata, attempts, hard_failures FROM save_jobs
           WHERE state = 'pending' AND next_attempt_at <= ? AND ${notInFlight}
           ORDER BY next_attempt_at, created_at LIMIT 1`,
        ),
        claim: this.db.prepare(
          `UPDATE save_jobs SET attempts = attempts + 1, next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'pending'`,
        ),
        nextDue: this.db.prepare(`SELECT MIN(next_attempt_at) AS at FROM save_jobs WHERE state = 'pending' AND ${notInFlight}`),
        // A completed job keeps only its id (to ignore replays): no message text lingers on disk.
        done: this.db.prepare(
          `UPDATE save_jobs SET state = 'done', messages = '[]', metadata = '{}', last_error = NULL, updated_at = ? WHERE id = ? AND state = 'pending'`,
        ),
        retry: this.db.prepare(
          `UPDATE save_jobs SET next_attempt_at = ?, last_error = ?, hard_failures = ?, updated_at = ? WHERE id = ? AND state = 'pending'`,
        ),
        dead: this.db.prepare(
          `UPDATE save_jobs SET state = 'dead', last_error = ?, hard_failures = ?, updated_at = ? WHERE id = ? AND state = 'pending'`,
        ),
        pullForward: this.db.prepare(
          `UPDATE save_jobs SET next_attempt_at = ?, updated_at = ? WHERE state = 'pending' AND next_attempt_at > ? AND ${notInFlight}`,
        ),
        count: this.db.prepare(`SELECT COUNT(*) AS n FROM save_jobs WHERE state = ?`),
        prune: this.db.prepare(`DELETE FROM save_jobs WHERE state = 'done' AND updated_at < ?`),
        status: this.db.prepare(
          `SELECT id, state, attempts, hard_failures, last_error, next_attempt_at, created_at FROM save_jobs WHERE id = ?`,
        ),
      };
      this.pending = this.stmt.count.get('pending')?.n ?? 0;
    } catch (err) {
      this.db.close();
      throw err;
    }
  }

  /**
   * Stores the exchange durably (synchronous; on disk when this returns). Returns false when the
   * id is already known (pending, done within the retention, or dead): a replay is never saved
   * twice. Works before `start`; throws after `stop` (the database is closed).
   */
  enqueue(job: SaveJob): boolean {
    if (this.closed) throw new Error('SaveQueue.enqueue after stop: the queue is closed');
    const now = Date.now();
    const { scope } = job;
    const result = this.stmt.insert.run(
      job.id,
      scope.userId,
      scope.agentId ?? null,
      scope.runId ?? null,
      JSON.stringify(job.messages),
      JSON.stringify(job.metadata),
      now,
      now,
      now,
    );
    if (result.changes === 0) return false;
    this.pending++;
    this.emitDepth();
    this.wakeAt(now);
    return true;
  }

  /** Starts the workers; everything pending from earlier runs is picked up at once (when due). */
  start(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.emitDepth();
    this.wakeAt(Date.now());
  }

  /**
   * Stops claiming work, waits up to `stopTimeoutMs` for running saves, then closes the database.
   * Jobs not finished stay pending on disk for the next start.
   */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.running = false;
    this.clearTimer();
    const running = [...this.inFlight.values()];
    if (running.length > 0) {
      await waitAtMost(Promise.allSettled(running), this.tuning.stopTimeoutMs);
    }
    this.closed = true;
    this.db.close();
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Jobs waiting to be saved (running ones included; dead ones not). */
  depth(): number {
    return this.pending;
  }

  /** Failed save attempts since this queue was created. */
  get failures(): number {
    return this.retries.failures;
  }

  /** Jobs in the dead-letter state. */
  deadCount(): number {
    if (this.closed) return 0;
    return this.stmt.count.get('dead')?.n ?? 0;
  }

  /** One job's bookkeeping, or undefined when the id is unknown (or was pruned). */
  status(id: string): SaveJobStatus | undefined {
    if (this.closed) return undefined;
    const row = this.stmt.status.get(id);
    if (!row) return undefined;
    return {
      id: row.id,
      state: row.state,
      attempts: row.attempts,
      hardFailures: row.hard_failures,
      lastError: row.last_error,
      nextAttemptAt: row.next_attempt_at,
      createdAt: row.created_at,
    };
  }

  /**
   * Resolves once nothing is pending or running; rejects after `timeoutMs` (for tests and
   * benchmarks). Also resolves when the queue is stopped.
   */
  drained(timeoutMs: number): Promise<void> {
    if (this.isDrained() || this.closed) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const wake = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        reject(new Error(`save queue not drained within ${timeoutMs} ms (depth ${this.pending})`));
      }, timeoutMs);
      this.waiters.push(wake);
    });
  }

  // -------------------------------------------------------------------------------------------
  // The worker
  // -------------------------------------------------------------------------------------------

  /** Claims and launches due jobs up to the concurrency bound, then arms the timer for the next. */
  private pump(): void {
    if (!this.running || this.closed) return;
    const now = Date.now();
    const paused = this.retries.pausedFor(now);
    if (paused > 0) {
      this.wakeAt(now + paused);
      return;
    }
    try {
      if (now - this.lastPrune >= PRUNE_EVERY_MS) {
        this.lastPrune = now;
        this.stmt.prune.run(now - this.tuning.retentionMs);
      }
      while (this.inFlight.size < this.tuning.concurrency) {
        const claimed = this.claim(now);
        if (!claimed) break;
        this.launch(claimed);
      }
      if (this.inFlight.size < this.tuning.concurrency) {
        const next = this.stmt.nextDue.get(this.inFlightJson())?.at;
        if (next !== null && next !== undefined) this.wakeAt(next);
      }
      this.checkDrained();
    } catch (err) {
      // The database failed (disk full, I/O error): try again later rather than spin.
      this.options.logger?.warn('save queue could not read its jobs', { error: errorText(err) });
      this.wakeAt(now + Math.max(this.tuning.baseDelayMs, 1000));
    }
  }

  /** The next due job, claimed: attempts + 1 and its retry time written before `save` runs. */
  private claim(now: number): Claimed | undefined {
    return this.db
      .transaction((): Claimed | undefined => {
        for (;;) {
          const row = this.stmt.due.get(now, this.inFlightJson());
          if (!row) return undefined;
          const attempt = row.attempts + 1;
          this.stmt.claim.run(now + this.retries.backoff(attempt), now, row.id);
          const parsed = this.parseRow(row);
          if (parsed) return { job: { ...parsed, attempt }, hardFailures: row.hard_failures };
          // A row we cannot read will never save: dead at once, keep looking.
          this.stmt.dead.run('unreadable job row (messages or metadata is not valid JSON)', row.hard_failures, now, row.id);
          this.pending = Math.max(0, this.pending - 1);
          this.emitDepth();
        }
      })
      .immediate();
  }

  private parseRow(row: JobRow): SaveJob | undefined {
    try {
      const messages: unknown = JSON.parse(row.messages);
      const metadata: unknown = JSON.parse(row.metadata);
      if (!Array.isArray(messages) || metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) return undefined;
      const scope: MemoryScope = {
        userId: row.user_id,
        ...(row.agent_id !== null ? { agentId: row.agent_id } : {}),
        ...(row.run_id !== null ? { runId: row.run_id } : {}),
      };
      return { id: row.id, scope, messages: messages as ChatMessage[], metadata: metadata as Record<string, unknown> };
    } catch {
      return undefined;
    }
  }

  private launch(claimed: Claimed): void {
    const { id } = claimed.job;
    const run = this.attempt(claimed).finally(() => {
      this.inFlight.delete(id);
      this.checkDrained();
      this.pump();
    });
    this.inFlight.set(id, run);
  }

  /** Runs one save and records its outcome. Never rejects. */
  private async attempt(claimed: Claimed): Promise<void> {
    try {
      await this.withTimeout(Promise.resolve().then(() => this.save(claimed.job)));
    } catch (err) {
      this.recordFailure(claimed, err);
      return;
    }
    this.recordSuccess(claimed);
  }

  private recordSuccess(claimed: Claimed): void {
    if (this.closed) return;
    const now = Date.now();
    try {
      if (this.stmt.done.run(now, claimed.job.id).changes > 0) {
        this.pending = Math.max(0, this.pending - 1);
        this.emitDepth();
      }
      // The service is back after an outage: whatever waits for its backoff is due now.
      if (this.retries.succeeded()) this.stmt.pullForward.run(now, now, now, this.inFlightJson());
    } catch (err) {
      // Not recorded: the job stays pending and is saved again later (at-least-once).
      this.options.logger?.warn('save queue could not record a completed save', { job_id: claimed.job.id, error: errorText(err) });
    }
  }

  private recordFailure(claimed: Claimed, err: unknown): void {
    const now = Date.now();
    const { id, attempt } = claimed.job;
    const failed = { id, attempt, hardFailures: claimed.hardFailures };
    const verdict = this.retries.failed(failed, err, now);
    if (this.closed) return;
    try {
      if (verdict.outcome === 'dead') {
        const recorded = this.stmt.dead.run(verdict.error, verdict.hardFailures, now, id).changes > 0;
        if (recorded) {
          this.pending = Math.max(0, this.pending - 1);
          this.emitDepth();
        }
        this.retries.gaveUp(failed, verdict, recorded);
      } else {
        this.stmt.retry.run(now + verdict.retryInMs, verdict.error, verdict.hardFailures, now, id);
      }
    } catch (dbErr) {
      this.options.logger?.warn('save queue could not record a failed save', { job_id: id, error: errorText(dbErr) });
    }
  }

  private withTimeout(promise: Promise<unknown>): Promise<unknown> {
    return withDeadline(promise, this.tuning.saveTimeoutMs, () => new SaveTimeoutError(this.tuning.saveTimeoutMs));
  }

  /** Arms the one timer for `at` unless it already fires earlier. */
  private wakeAt(at: number): void {
    if (!this.running || this.closed) return;
    if (this.timer !== undefined && this.timerAt <= at) return;
    this.clearTimer();
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Infinity;
        this.pump();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now())),
    );
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  private inFlightJson(): string {
    return JSON.stringify([...this.inFlight.keys()]);
  }

  private isDrained(): boolean {
    return this.pending === 0 && this.inFlight.size === 0;
  }

  private checkDrained(): void {
    if (!this.isDrained() || this.waiters.length === 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  private emitDepth(): void {
    try {
      this.options.onDepth?.(this.pending);
    } catch {
      // A metrics hook must not break the queue.
    }
  }
}
