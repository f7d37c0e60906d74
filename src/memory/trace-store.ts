/**
 * The injection trace: the last N memory-route requests (OpenAI's chat and responses routes,
 * Anthropic's messages), each with who asked, which memories the recall found (ids and scores),
 * which of them were injected, how long the search took, and what became of the exchange's save
 * (queued, saved with the memories it created, failed). It answers "why did the model say that?"
 * in the console.
 *
 * - A ring in `<DATA_DIR>/traces.db` (SQLite): inserting the N+1th row drops the oldest.
 * - Ids and scores only; the prompt text is kept only when `keepText` is on (`DEBUG`).
 * - Per instance: with several proxies each keeps the requests it served.
 * - Never fails a request: a write that fails is logged once per minute and dropped. Writes are
 *   not fsynced (a trace is diagnostics; a crash may lose the last few).
 * - Writes are gathered and committed together once per turn of the event loop (a chat makes
 *   three: its record, queued, saved; one commit each cost the serving thread ~0.17 ms per chat
 *   under load). A query or a close commits what is gathered first, so reads see every write.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from '../logger';
import type { MemoryItem, MemoryScope } from './types';

export type TraceApi = 'openai' | 'anthropic';
export type SaveStatus = 'none' | 'queued' | 'saved' | 'failed';

export interface TraceRecord {
  request_id: string;
  at: string;
  caller: string;
  user_id: string;
  agent_id?: string;
  run_id?: string;
  api: TraceApi;
  route: string;
  model: string | null;
  search_ms: number | null;
  recalled: { id: string; score: number | null }[];
  injected: string[];
  save: { status: SaveStatus; memory_ids: string[]; error?: string };
  prompt?: string;
}

/** What a memory route reports about one request. */
export interface TraceInput {
  requestId: string;
  /** The exchange's idempotency key (the save queue's job id), so its save can be found again. */
  exchangeId: string;
  callerId: string;
  scope: MemoryScope;
  api: TraceApi;
  route: string;
  model: unknown;
  /** Undefined when the request did not recall (memory mode write). */
  searchMs: number | undefined;
  recalled: readonly MemoryItem[];
  injected: readonly MemoryItem[];
  prompt: string | undefined;
}

export interface TraceQuery {
  userId?: string | undefined;
  requestId?: string | undefined;
  limit: number;
}

interface Row {
  data: string;
  save_status: SaveStatus;
  save_ids: string;
  save_error: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS traces (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,
  exchange_id TEXT NOT NULL,
  user_id     TEXT NOT NULL,
  request_id  TEXT NOT NULL,
  data        TEXT NOT NULL,
  save_status TEXT NOT NULL,
  save_ids    TEXT NOT NULL DEFAULT '[]',
  save_error  TEXT
);
CREATE INDEX IF NOT EXISTS traces_exchange ON traces (exchange_id);
CREATE INDEX IF NOT EXISTS traces_user ON traces (user_id, seq);
CREATE INDEX IF NOT EXISTS traces_request ON traces (request_id, seq);
`;

const MAX_ERROR_CHARS = 500;
const WARN_EVERY_MS = 60_000;

export class TraceStore {
  private readonly db: Database.Database;
  private readonly stmt: {
    insert: Database.Statement;
    trim: Database.Statement;
    status: Database.Statement;
    recent: Database.Statement;
    byUser: Database.Statement;
    byRequest: Database.Statement;
    byBoth: Database.Statement;
  };
  private lastWarn = 0;
  private closed = false;
  /** Writes gathered for the next commit (see the header). */
  private pending: Array<() => unknown> = [];

  private constructor(
    file: string,
    private readonly max: number,
    private readonly keepText: boolean,
    private readonly logger: Logger,
  ) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = OFF');
    this.db.exec(SCHEMA);
    const select = 'SELECT data, save_status, save_ids, save_error FROM traces';
    this.stmt = {
      insert: this.db.prepare('INSERT INTO traces (exchange_id, user_id, request_id, data, save_status) VALUES (?, ?, ?, ?, ?)'),
      trim: this.db.prepare('DELETE FROM traces WHERE seq <= ?'),
      status: this.db.prepare('UPDATE traces SET save_status = ?, save_ids = ?, save_error = ? WHERE exchange_id = ?'),
      recent: this.db.prepare(`${select} ORDER BY seq DESC LIMIT ?`),
      byUser: this.db.prepare(`${select} WHERE user_id = ? ORDER BY seq DESC LIMIT ?`),
      byRequest: this.db.prepare(`${select} WHERE request_id = ? ORDER BY seq DESC LIMIT ?`),
      byBoth: this.db.prepare(`${select} WHERE user_id = ? AND request_id = ? ORDER BY seq DESC LIMIT ?`),
    };
  }

  /** Opens (or creates) the ring at `file`, keeping the last `max` requests (max ≥ 1). */
  static open(file: string, options: { max: number; keepText: boolean; logger: Logger }): TraceStore {
    return new TraceStore(file, options.max, options.keepText, options.logger);
  }

  /** Records one memory-route request (its save is 'none' until the exchange is queued). */
  record(input: TraceInput): void {
    const trace: Omit<TraceRecord, 'save'> = {
      request_id: input.requestId,
      at: new Date().toISOString(),
      caller: input.callerId,
      user_id: input.scope.userId,
      ...(input.scope.agentId !== undefined ? { agent_id: input.scope.agentId } : {}),
      ...(input.scope.runId !== undefined ? { run_id: input.scope.runId } : {}),
      api: input.api,
      route: input.route,
      model: typeof input.model === 'string' ? input.model : null,
      search_ms: input.searchMs === undefined ? null : Math.round(input.searchMs * 10) / 10,
      recalled: input.recalled.map((m) => ({ id: m.id, score: typeof m.score === 'number' ? m.score : null })),
      injected: input.injected.map((m) => m.id),
      ...(this.keepText && input.prompt !== undefined ? { prompt: input.prompt } : {}),
    };
    this.write(() => {
      const { lastInsertRowid } = this.stmt.insert.run(input.exchangeId, trace.user_id, trace.request_id, JSON.stringify(trace), 'none');
      const seq = Number(lastInsertRowid);
      if (seq > this.max) this.stmt.trim.run(seq - this.max);
    });
  }

  /** The exchange `exchangeId` is in the save queue. */
  queued(exchangeId: string): void {
    this.write(() => this.stmt.status.run('queued', '[]', null, exchangeId));
  }

  /** The exchange `exchangeId` was saved and created `memoryIds` (none when nothing was worth keeping). */
  saved(exchangeId: string, memoryIds: readonly string[]): void {
    this.write(() => this.stmt.status.run('saved', JSON.stringify(memoryIds), null, exchangeId));
  }

  /** The save queue gave up on the exchange. */
  failed(exchangeId: string, error: string): void {
    this.write(() => this.stmt.status.run('failed', '[]', error.slice(0, MAX_ERROR_CHARS), exchangeId));
  }

  /** Newest first: all requests, one user's, one request id's, or both. */
  query(q: TraceQuery): TraceRecord[] {
    if (this.closed) return [];
    this.flush();
    const rows = (
      q.userId !== undefined && q.requestId !== undefined
        ? this.stmt.byBoth.all(q.userId, q.requestId, q.limit)
        : q.userId !== undefined
          ? this.stmt.byUser.all(q.userId, q.limit)
          : q.requestId !== undefined
            ? this.stmt.byRequest.all(q.requestId, q.limit)
            : this.stmt.recent.all(q.limit)
    ) as Row[];
    return rows.map((row) => {
      const trace = JSON.parse(row.data) as Omit<TraceRecord, 'save'>;
      const save: TraceRecord['save'] = { status: row.save_status, memory_ids: JSON.parse(row.save_ids) as string[] };
      if (row.save_error !== null) save.error = row.save_error;
      return { ...trace, save };
    });
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.db.close();
  }

  private write(fn: () => unknown): void {
    if (this.closed) return;
    this.pending.push(fn);
    if (this.pending.length === 1) setImmediate(() => this.flush());
  }

  /** Commits the gathered writes in one transaction; a write that fails is left out, the others kept. */
  private flush(): void {
    const batch = this.pending;
    if (batch.length === 0 || this.closed) return;
    this.pending = [];
    try {
      this.db.transaction(() => {
        for (const fn of batch) {
          try {
            fn();
          } catch (err) {
            this.warn(err);
          }
        }
      })();
    } catch (err) {
      this.warn(err);
    }
  }

  private warn(err: unknown): void {
    const now = Date.now();
    if (now - this.lastWarn >= WARN_EVERY_MS) {
      this.lastWarn = now;
      this.logger.warn('injection trace write failed; the trace misses requests', {
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }
}
