/**
 * The save queue shared by several proxy instances, in PostgreSQL: an instance that is replaced
 * rather than restarted (a rolled pod, a scale-in, a lost VM) leaves its queued exchanges to the
 * others instead of taking them along. The same promises as the SQLite queue (save-queue.ts):
 *
 * - `enqueue` is one INSERT … ON CONFLICT DO NOTHING keyed by the exchange id: committed when it
 *   resolves (the chat routes hold the end of the response for it), a replay is ignored on every
 *   instance, also after its save completed (completed ids kept, without text, for `retentionMs`).
 * - Any instance claims due jobs with `FOR UPDATE SKIP LOCKED`, so two instances never claim the
 *   same job at once. A claim is a lease (`lease_until`), renewed every third of `leaseMs` while
 *   the save runs; a claim whose instance died (SIGKILL, lost VM) returns to the queue when its
 *   lease passes and is saved by another (at-least-once: a save cut off mid-way may have reached
 *   the engine). Every outcome is written only by the claim's holder (`leased_by` and `attempts`
 *   fence it), so a late answer from an expired claim cannot overwrite a newer one.
 * - Backoff with jitter, the outage pause (two different jobs failing transiently in a row pause
 *   this instance's claiming; the first success makes every waiting job due again), 'dead' after
 *   `maxFailures` hard failures or at once for a permanent one: the rule both queues share
 *   (save-retry.ts).
 * - `depth` is the shared number of pending jobs, refreshed on every poll; `failures` is this
 *   instance's.
 * - The database may be down when the proxy starts or later: the schema is created once it
 *   answers; an exchange it cannot commit within `enqueueTimeoutMs` is kept in the instance's
 *   SQLite queue file (`localPath`) and moved in once it is back (without `localPath` the enqueue
 *   fails: counted lost, /health degraded); claiming resumes when it is back.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import Database from 'better-sqlite3';
import { Pool, type PoolClient } from 'pg';
import { waitAtMost, withDeadline } from '../util/deadline';
import {
  SaveQueue,
  SaveTimeoutError,
  queueTuning,
  type ExchangeQueue,
  type QueueTuning,
  type SaveAttempt,
  type SaveJob,
  type SaveJobStatus,
  type SaveQueueOptions,
} from './save-queue';
import { errorText, SaveRetries } from './save-retry';
import type { ChatMessage, MemoryScope } from './types';

export interface PostgresSaveQueueOptions extends Omit<SaveQueueOptions, 'path' | 'synchronous' | 'maxBytes'> {
  /** postgres:// URL of the queue's database. */
  connectionString: string;
  /** Table name (default `mp_save_jobs`). */
  table?: string;
  /** How long a claim is this instance's without renewal (default 60 s). */
  leaseMs?: number;
  /** How often an idle instance looks for due jobs (default 1 s). */
  pollMs?: number;
  /** Connections in the pool (default 4). */
  poolSize?: number;
  /** Longest wait for an enqueue to commit (default 2 s). */
  enqueueTimeoutMs?: number;
  /** This instance's name in `leased_by` (default a random UUID). */
  instanceId?: string;
  /**
   * This instance's SQLite queue file (save-queue.ts, `DATA_DIR/save-queue.db`). Its pending
   * exchanges are moved into the shared queue once the database answers (switching queues loses
   * none), and an exchange the database cannot take (it is down) is kept there and moved in when
   * it is back.
   */
  localPath?: string;
}

interface JobRow {
  id: string;
  user_id: string;
  agent_id: string | null;
  run_id: string | null;
  messages: unknown;
  metadata: unknown;
  attempts: number;
  hard_failures: number;
}

interface Claimed {
  job: SaveAttempt;
  hardFailures: number;
}

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;
const PRUNE_EVERY_MS = 60 * 60 * 1000;
const SCHEMA_RETRY_MS = 2000;

export class PostgresSaveQueue implements ExchangeQueue {
  private readonly pool: Pool;
  private readonly table: string;
  private readonly instanceId: string;
  private readonly tuning: QueueTuning;
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly enqueueTimeoutMs: number;

  /** Resolves once the table exists (retried while the database is away), or the queue stopped. Never rejects. */
  private readonly ready: Promise<void>;
  private schemaReady = false;
  private pending = 0;
  private dead = 0;
  private readonly retries: SaveRetries;
  private running = false;
  private closed = false;
  private pumping = false;
  private pumpAgain = false;
  private readonly inFlight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private lastPrune = 0;
  /** The local queue exchanges are kept in while the database is down (opened on first need). */
  private spool: SaveQueue | undefined;
  /** Exchanges kept there and not moved in yet. */
  private spooled = 0;
  private lastSpoolWarn = 0;
  private lastMoveWarn = 0;

  constructor(private readonly options: PostgresSaveQueueOptions) {
    const table = options.table ?? 'mp_save_jobs';
    if (!IDENTIFIER.test(table)) throw new Error(`save queue table name ${JSON.stringify(table)} is not a plain identifier`);
    this.table = table;
    this.instanceId = options.instanceId ?? randomUUID();
    this.tuning = queueTuning(options);
    this.retries = new SaveRetries(this.tuning, options);
    this.leaseMs = Math.max(100, options.leaseMs ?? 60_000);
    this.pollMs = Math.max(10, options.pollMs ?? 1000);
    this.enqueueTimeoutMs = options.enqueueTimeoutMs ?? 2000;
    this.pool = new Pool({
      connectionString: options.connectionString,
      max: Math.max(2, options.poolSize ?? 4),
      connectionTimeoutMillis: this.enqueueTimeoutMs,
      idleTimeoutMillis: 30_000,
    });
    // A connection the server drops (restart, failover) is an error event on the idle client: the
    // pool replaces it; without a listener it would crash the process.
    this.pool.on('error', (err) => this.options.logger?.warn('save queue database connection lost', { error: errorText(err) }));
    this.ready = this.createSchema();
  }

  /** Stores the exchange (committed when this resolves); false when the id is already known. */
  async enqueue(job: SaveJob): Promise<boolean> {
    if (this.closed) throw new Error('PostgresSaveQueue.enqueue after stop: the queue is closed');
    const { scope } = job;
    const insert = async (): Promise<boolean> => {
      await this.ready;
      if (!this.schemaReady) throw new Error('PostgresSaveQueue.enqueue after stop: the queue is closed');
      const result = await this.pool.query(
        `INSERT INTO ${this.table} (id, user_id, agent_id, run_id, messages, metadata) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING`,
        [job.id, scope.userId, scope.agentId ?? null, scope.runId ?? null, JSON.stringify(job.messages), JSON.stringify(job.metadata)],
      );
      return result.rowCount === 1;
    };
    let queued: boolean;
    try {
      queued = await withDeadline(
        insert(),
        this.enqueueTimeoutMs,
        () => new Error(`the save queue's database did not commit within ${this.enqueueTimeoutMs} ms`),
      );
    } catch (err) {
      if (this.options.localPath === undefined || this.closed) throw err;
      return this.keepLocally(this.options.localPath, job, err);
    }
    if (queued) {
      this.pending++;
      this.emitDepth();
      this.wake(0);
    }
    return queued;
  }

  start(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.wake(0);
  }

  /**
   * Stops claiming, waits up to `stopTimeoutMs` for running saves, hands the claims of any still
   * running back to the queue (another instance takes them now, not after the lease), and closes
   * the pool.
   */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    const running = [...this.inFlight.values()];
    if (running.length > 0) {
      await waitAtMost(Promise.allSettled(running), this.tuning.stopTimeoutMs);
    }
    this.closed = true;
    if (this.schemaReady) {
      await this.pool
        .query(`UPDATE ${this.table} SET lease_until = NULL, leased_by = NULL WHERE leased_by = $1 AND state = 'pending'`, [
          this.instanceId,
        ])
        .catch((err: unknown) =>
          this.options.logger?.warn('save queue could not hand back its claims (they return when their lease passes)', {
            error: errorText(err),
          }),
        );
    }
    await this.pool.end().catch(() => undefined);
    await this.spool?.stop();
  }

  /** Pending jobs of every instance (running ones included) as of the last poll, and this instance's kept locally. */
  depth(): number {
    return this.pending + this.spooled;
  }

  /** Failed save attempts on this instance since it started. */
  get failures(): number {
    return this.retries.failures;
  }

  /** Dead jobs of every instance, as of the last poll. */
  deadCount(): number {
    return this.dead;
  }

  /** One job's bookkeeping, or undefined when the id is unknown (or was pruned). */
  async status(id: string): Promise<SaveJobStatus | undefined> {
    await this.ready;
    const { rows } = await this.pool.query<{
      id: string;
      state: SaveJobStatus['state'];
      attempts: number;
      hard_failures: number;
      last_error: string | null;
      next: string;
      created: string;
    }>(
      `SELECT id, state, attempts, hard_failures, last_error, (extract(epoch FROM next_attempt_at) * 1000)::bigint AS next, (extract(epoch FROM created_at) * 1000)::bigint AS created
       FROM ${this.table} WHERE id = $1`,
      [id],
    );
    const row = rows[0];
    if (!row) return undefined;
    return {
      id: row.id,
      state: row.state,
      attempts: row.attempts,
      hardFailures: row.hard_failures,
      lastError: row.last_error,
      nextAttemptAt: Number(row.next),
      createdAt: Number(row.created),
    };
  }

  /** Resolves once no job is pending anywhere and none runs here; rejects after `timeoutMs`. */
  async drained(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (this.closed) return;
      if (this.schemaReady) {
        await this.refreshCounts().catch(() => undefined);
        if (this.pending === 0 && this.spooled === 0 && this.inFlight.size === 0) return;
      }
      if (Date.now() > until) throw new Error(`save queue not drained within ${timeoutMs} ms (depth ${this.pending})`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(100, this.pollMs)));
    }
  }

  // -------------------------------------------------------------------------------------------
  // The worker
  // -------------------------------------------------------------------------------------------

  private async createSchema(): Promise<void> {
    const ddl = `
      CREATE TABLE IF NOT EXISTS ${this.table} (
        id              TEXT PRIMARY KEY,
        user_id         TEXT NOT NULL,
        agent_id        TEXT,
        run_id          TEXT,
        messages        JSONB NOT NULL,
        metadata        JSONB NOT NULL,
        state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        hard_failures   INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        lease_until     TIMESTAMPTZ,
        leased_by       TEXT,
        last_error      TEXT,
        created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
      );
      CREATE INDEX IF NOT EXISTS ${this.table}_due ON ${this.table} (next_attempt_at) WHERE state = 'pending';
      CREATE INDEX IF NOT EXISTS ${this.table}_done ON ${this.table} (updated_at) WHERE state = 'done';`;
    for (;;) {
      // Stopped before the database ever answered: nothing to create (the waiting enqueues have timed out).
      if (this.closed) return;
      let client: PoolClient | undefined;
      try {
        client = await this.pool.connect();
        // Instances starting together must not race on CREATE TABLE (it is not atomic in Postgres).
        await client.query('SELECT pg_advisory_lock(hashtext($1))', [this.table]);
        try {
          await client.query(ddl);
        } finally {
          await client.query('SELECT pg_advisory_unlock(hashtext($1))', [this.table]);
        }
        this.schemaReady = true;
        if (this.options.localPath !== undefined) await this.moveLocal(this.options.localPath);
        return;
      } catch (err) {
        this.options.logger?.warn('save queue database not ready; retrying', { error: errorText(err) });
        await new Promise((resolve) => setTimeout(resolve, SCHEMA_RETRY_MS).unref());
      } finally {
        client?.release();
      }
    }
  }

  /**
   * Keeps an exchange the database could not take in the local SQLite queue (committed when this
   * returns, as there); it is moved in on a later poll. Throws when that fails too.
   */
  private keepLocally(file: string, job: SaveJob, cause: unknown): boolean {
    this.spool ??= new SaveQueue({ path: file, save: () => Promise.reject(new Error('the local spool is never worked, only moved in')) });
    const kept = this.spool.enqueue(job);
    if (kept) {
      this.spooled++;
      this.emitDepth();
      const now = Date.now();
      if (now - this.lastSpoolWarn >= 60_000) {
        this.lastSpoolWarn = now;
        this.options.logger?.warn('save queue database unavailable; exchanges are kept in DATA_DIR until it is back', {
          error: errorText(cause),
        });
      }
    }
    return kept;
  }

  /** Moves the local queue's pending jobs in; what could not be moved stays for the next poll. */
  private async moveLocal(file: string): Promise<void> {
    const moved = await this.importSqlite(file);
    this.spooled = Math.max(0, this.spooled - moved);
  }

  /** Moves the pending jobs of a SQLite queue file into this queue (ids kept, so a replay is still ignored); how many it moved. */
  private async importSqlite(file: string): Promise<number> {
    if (!fs.existsSync(file)) return 0;
    let moved = 0;
    let local: Database.Database | undefined;
    try {
      local = new Database(file, { fileMustExist: true });
      local.pragma('busy_timeout = 5000');
      const rows = local
        .prepare(`SELECT id, user_id, agent_id, run_id, messages, metadata FROM save_jobs WHERE state = 'pending'`)
        .all() as { id: string; user_id: string; agent_id: string | null; run_id: string | null; messages: string; metadata: string }[];
      const markDone = local.prepare(
        `UPDATE save_jobs SET state = 'done', messages = '[]', metadata = '{}', updated_at = ? WHERE id = ? AND state = 'pending'`,
      );
      for (const row of rows) {
        await this.pool.query(
          `INSERT INTO ${this.table} (id, user_id, agent_id, run_id, messages, metadata) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) ON CONFLICT (id) DO NOTHING`,
          [row.id, row.user_id, row.agent_id, row.run_id, row.messages, row.metadata],
        );
        markDone.run(Date.now(), row.id);
        moved++;
      }
      if (rows.length > 0)
        this.options.logger?.warn('save queue: moved the exchanges of the local queue into the shared one', { jobs: rows.length });
    } catch (err) {
      // Left where they are: the next poll (or start) tries again; said at most once a minute.
      const now = Date.now();
      if (now - this.lastMoveWarn >= 60_000) {
        this.lastMoveWarn = now;
        this.options.logger?.warn('save queue could not move the local queue into the shared one', { error: errorText(err) });
      }
    } finally {
      local?.close();
    }
    return moved;
  }

  /** Runs `pump` now (or again right after the running one), never two at once. */
  private wake(delayMs: number): void {
    if (!this.running || this.closed) return;
    if (delayMs <= 0) {
      if (this.pumping) {
        this.pumpAgain = true;
        return;
      }
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      void this.pump();
      return;
    }
    if (this.timer || this.pumping) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.pump();
    }, delayMs);
    this.timer.unref();
  }

  /** Claims and launches due jobs up to the concurrency bound, then polls again later. */
  private async pump(): Promise<void> {
    if (!this.running || this.closed || this.pumping) return;
    this.pumping = true;
    let next = this.pollMs;
    try {
      if (!this.schemaReady) await this.ready;
      const now = Date.now();
      const paused = this.retries.pausedFor(now);
      if (paused > 0) {
        next = paused;
        return;
      }
      if (now - this.lastPrune >= PRUNE_EVERY_MS) {
        this.lastPrune = now;
        await this.pool.query(`DELETE FROM ${this.table} WHERE state = 'done' AND updated_at < now() - $1 * interval '1 millisecond'`, [
          this.tuning.retentionMs,
        ]);
      }
      if (this.spooled > 0 && this.options.localPath !== undefined) await this.moveLocal(this.options.localPath);
      const room = this.tuning.concurrency - this.inFlight.size;
      if (room > 0) for (const claimed of await this.claim(room)) this.launch(claimed);
      await this.refreshCounts();
    } catch (err) {
      if (!this.closed) this.options.logger?.warn('save queue could not read its jobs', { error: errorText(err) });
      next = Math.max(this.pollMs, 1000);
    } finally {
      this.pumping = false;
      if (this.pumpAgain) {
        this.pumpAgain = false;
        this.wake(0);
      } else this.wake(next);
    }
  }

  /** Up to `limit` due jobs no other instance holds, each claimed with a fresh lease. */
  private async claim(limit: number): Promise<Claimed[]> {
    const { rows } = await this.pool.query<JobRow>(
      `WITH due AS (
         SELECT id FROM ${this.table}
         WHERE state = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until <= now())
         ORDER BY next_attempt_at, created_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED
       )
       UPDATE ${this.table} AS j
       SET attempts = j.attempts + 1, lease_until = now() + $2 * interval '1 millisecond', leased_by = $3, updated_at = now()
       FROM due WHERE j.id = due.id
       RETURNING j.id, j.user_id, j.agent_id, j.run_id, j.messages, j.metadata, j.attempts, j.hard_failures`,
      [limit, this.leaseMs, this.instanceId],
    );
    const claimed: Claimed[] = [];
    for (const row of rows) {
      const job = parseRow(row);
      if (job) claimed.push({ job: { ...job, attempt: row.attempts }, hardFailures: row.hard_failures });
      else
        await this.finish(row.id, row.attempts, 'dead', {
          error: 'unreadable job row (messages or metadata is not JSON of the right shape)',
          hardFailures: row.hard_failures,
        });
    }
    return claimed;
  }

  private launch(claimed: Claimed): void {
    const { id } = claimed.job;
    const run = this.attempt(claimed).finally(() => {
      this.inFlight.delete(id);
      this.wake(0);
    });
    this.inFlight.set(id, run);
  }

  /** Runs one save with its lease renewed meanwhile, and records the outcome. Never rejects. */
  private async attempt(claimed: Claimed): Promise<void> {
    const { id, attempt } = claimed.job;
    const renew = setInterval(
      () => {
        this.pool
          .query(
            `UPDATE ${this.table} SET lease_until = now() + $1 * interval '1 millisecond' WHERE id = $2 AND leased_by = $3 AND attempts = $4 AND state = 'pending'`,
            [this.leaseMs, id, this.instanceId, attempt],
          )
          .catch((err: unknown) => this.options.logger?.warn('save queue could not renew a claim', { job_id: id, error: errorText(err) }));
      },
      Math.max(50, Math.floor(this.leaseMs / 3)),
    );
    renew.unref();
    let failure: unknown;
    let failed = false;
    try {
      await withDeadline(
        Promise.resolve().then(() => this.options.save(claimed.job)),
        this.tuning.saveTimeoutMs,
        () => new SaveTimeoutError(this.tuning.saveTimeoutMs),
      );
    } catch (err) {
      failed = true;
      failure = err;
    } finally {
      clearInterval(renew);
    }
    try {
      if (failed) await this.recordFailure(claimed, failure);
      else await this.recordSuccess(claimed);
    } catch (dbErr) {
      // Not recorded: the claim returns to the queue when its lease passes (at-least-once).
      this.options.logger?.warn('save queue could not record a save outcome', { job_id: id, error: errorText(dbErr) });
    }
  }

  private async recordSuccess(claimed: Claimed): Promise<void> {
    const { id, attempt } = claimed.job;
    if (await this.finish(id, attempt, 'done')) this.pending = Math.max(0, this.pending - 1);
    else
      this.options.logger?.warn('save queue: a save finished after its claim had passed to another instance (it may be saved twice)', {
        job_id: id,
      });
    this.emitDepth();
    if (this.retries.succeeded()) {
      // The service is back after an outage: whatever waits for its backoff is due now.
      await this.pool.query(
        `UPDATE ${this.table} SET next_attempt_at = now(), updated_at = now() WHERE state = 'pending' AND next_attempt_at > now() AND leased_by IS NULL`,
      );
    }
  }

  private async recordFailure(claimed: Claimed, err: unknown): Promise<void> {
    const { id, attempt } = claimed.job;
    const failed = { id, attempt, hardFailures: claimed.hardFailures };
    const verdict = this.retries.failed(failed, err);
    if (this.closed) return;
    if (verdict.outcome === 'dead') {
      const recorded = await this.finish(id, attempt, 'dead', { error: verdict.error, hardFailures: verdict.hardFailures });
      if (recorded) {
        this.pending = Math.max(0, this.pending - 1);
        this.dead++;
        this.emitDepth();
      }
      this.retries.gaveUp(failed, verdict, recorded);
      return;
    }
    await this.pool.query(
      `UPDATE ${this.table} SET next_attempt_at = now() + $1 * interval '1 millisecond', last_error = $2, hard_failures = $3, lease_until = NULL, leased_by = NULL, updated_at = now()
       WHERE id = $4 AND leased_by = $5 AND attempts = $6 AND state = 'pending'`,
      [verdict.retryInMs, verdict.error, verdict.hardFailures, id, this.instanceId, attempt],
    );
  }

  /** Ends a claim this instance still holds (done: the text is dropped, only the id stays). */
  private async finish(
    id: string,
    attempt: number,
    state: 'done' | 'dead',
    failure?: { error: string; hardFailures: number },
  ): Promise<boolean> {
    const result =
      state === 'done'
        ? await this.pool.query(
            `UPDATE ${this.table} SET state = 'done', messages = '[]', metadata = '{}', last_error = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1 AND leased_by = $2 AND attempts = $3 AND state = 'pending'`,
            [id, this.instanceId, attempt],
          )
        : await this.pool.query(
            `UPDATE ${this.table} SET state = 'dead', last_error = $4, hard_failures = $5, lease_until = NULL, updated_at = now()
             WHERE id = $1 AND leased_by = $2 AND attempts = $3 AND state = 'pending'`,
            [id, this.instanceId, attempt, failure?.error ?? null, failure?.hardFailures ?? 0],
          );
    return result.rowCount === 1;
  }

  private async refreshCounts(): Promise<void> {
    const { rows } = await this.pool.query<{ pending: number; dead: number }>(
      `SELECT count(*) FILTER (WHERE state = 'pending')::int AS pending, count(*) FILTER (WHERE state = 'dead')::int AS dead FROM ${this.table}`,
    );
    const row = rows[0];
    if (!row) return;
    const changed = row.pending !== this.pending;
    this.pending = row.pending;
    this.dead = row.dead;
    if (changed) this.emitDepth();
  }

  private emitDepth(): void {
    try {
      this.options.onDepth?.(this.pending);
    } catch {
      // A metrics hook must not break the queue.
    }
  }
}

/** A claimed row as a job, or undefined when its JSON is not of the right shape. */
function parseRow(row: JobRow): SaveJob | undefined {
  const { messages, metadata } = row;
  if (!Array.isArray(messages) || metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) return undefined;
  const scope: MemoryScope = {
    userId: row.user_id,
    ...(row.agent_id !== null ? { agentId: row.agent_id } : {}),
    ...(row.run_id !== null ? { runId: row.run_id } : {}),
  };
  return { id: row.id, scope, messages: messages as ChatMessage[], metadata: metadata as Record<string, unknown> };
}
