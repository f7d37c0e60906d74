/**
 * The MemoryService the serving thread uses for the mem0 OSS backends: every call is posted to
 * the engine's worker thread (engine-thread.ts) and answered from there. The serving thread keeps
 * only what is cheap: the durable save queue's INSERT, request routing, injection and streaming.
 *
 * - Errors come back as the same typed errors (protocol.ts), so routes and the save queue see no
 *   difference from an in-process engine.
 * - A worker that dies (a crash in native code, out of memory) fails its calls in flight as
 *   "temporarily unavailable" (the save queue retries them), is started again after a second,
 *   and the service is unavailable meanwhile.
 * - `close` asks the worker to close its stores (bounded), then ends the thread.
 */
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Config } from '../../config';
import { MemoryUnavailableError } from '../../errors';
import type { Logger } from '../../logger';
import type { GuardTuning } from '../resilience';
import type { AddInput, ListOptions, MemoryItem, MemoryScope, MemoryService, SearchOptions, UsersOptions, UsersPage } from '../types';
import { UnavailableMemoryService } from '../unavailable';
import { fromWire, type EngineCall, type EngineWorkerData, type FromWorker } from './protocol';

export interface WorkerServiceOptions {
  tuning?: Partial<GuardTuning> | undefined;
  onAvailabilityChange?: ((available: boolean) => void) | undefined;
  startupTimeoutMs?: number | undefined;
  batchEmbeddings?: boolean | undefined;
  /**
   * The engine thread's script, when not the one beside this file (the tests run a copy of src/
   * transpiled once per run, instead of loading the sources through tsx in every thread).
   */
  threadScript?: string | undefined;
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

const RESTART_DELAY_MS = 1000;
const CLOSE_TIMEOUT_MS = 10_000;
const AVAILABILITY_REFRESH_MS = 1000;

/**
 * Starts a worker thread on engine-thread: the given script, else the compiled `.js` next to this
 * file, or the `.ts` source through tsx when running from source (`npm run dev`).
 */
function spawnEngineThread(data: EngineWorkerData, script: string | undefined): Worker {
  if (script !== undefined) return new Worker(script, { workerData: data });
  const ext = path.extname(__filename);
  const entry = path.join(__dirname, `engine-thread${ext}`);
  if (ext === '.ts') {
    const boot = "const { workerData } = require('node:worker_threads'); require(workerData.tsx); require(workerData.entry);";
    return new Worker(boot, { eval: true, workerData: { ...data, tsx: require.resolve('tsx/cjs'), entry } });
  }
  return new Worker(entry, { workerData: data });
}

/** Writes a log line of the worker through this thread's logger (which redacts it). */
function forwardLog(logger: Logger, line: Extract<FromWorker, { type: 'log' }>): void {
  logger.log({ level: line.level, message: line.message, ...line.meta });
}

export class WorkerMemoryService implements MemoryService {
  private worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closing: Promise<void> | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private alive = true;
  /** Last known availability (pushed by the worker on every change, refreshed in the background). */
  private known = { available: true, at: Date.now() };
  private refreshing: Promise<void> | undefined;

  private constructor(
    readonly backend: string,
    private readonly data: EngineWorkerData,
    private readonly logger: Logger,
    private readonly options: WorkerServiceOptions,
    worker: Worker,
  ) {
    this.worker = worker;
    this.attach(worker);
    // Bound, so a wrapper made with Object.create(service) (tests slow one call down that way)
    // still closes and counts on this instance, not on the wrapper.
    for (const name of ['search', 'list', 'add', 'get', 'update', 'users', 'delete', 'deleteAll', 'available', 'close'] as const) {
      Object.defineProperty(this, name, { value: this[name].bind(this), writable: true, configurable: true });
    }
  }

  /**
   * Starts the worker and waits for its engine; an engine that cannot be built (no key, bad
   * configuration, unopenable store) gives an UnavailableMemoryService saying why, as in-process.
   */
  static async start(config: Config, logger: Logger, options: WorkerServiceOptions = {}): Promise<MemoryService> {
    const data: EngineWorkerData = {
      config: { ...config },
      secrets: [...config.secrets],
      tuning: options.tuning,
      batchEmbeddings: options.batchEmbeddings,
      startupTimeoutMs: options.startupTimeoutMs,
    };
    const worker = spawnEngineThread(data, options.threadScript);
    const ready = await WorkerMemoryService.waitReady(worker, logger);
    if (ready.unavailableReason !== undefined) {
      await worker.terminate();
      return new UnavailableMemoryService(ready.backend, ready.unavailableReason);
    }
    const service = new WorkerMemoryService(ready.backend, data, logger, options, worker);
    service.remember(ready.available ?? true);
    if (ready.available === false) options.onAvailabilityChange?.(false);
    return service;
  }

  private static waitReady(
    worker: Worker,
    logger: Logger,
  ): Promise<{ backend: string; unavailableReason?: string | undefined; available?: boolean | undefined }> {
    return new Promise((resolve) => {
      const onMessage = (message: FromWorker): void => {
        if (message.type === 'log') forwardLog(logger, message);
        if (message.type !== 'ready') return;
        worker.off('message', onMessage);
        worker.off('exit', onExit);
        resolve(message);
      };
      const onExit = (code: number): void => {
        worker.off('message', onMessage);
        resolve({ backend: 'unknown', unavailableReason: `the memory engine's thread exited at start (code ${code})` });
      };
      worker.on('message', onMessage);
      worker.on('exit', onExit);
    });
  }

  search(scope: MemoryScope, query: string, options: SearchOptions): Promise<MemoryItem[]> {
    return this.call({ op: 'search', scope, query, options }) as Promise<MemoryItem[]>;
  }

  list(scope: MemoryScope, options: ListOptions): Promise<MemoryItem[]> {
    return this.call({ op: 'list', scope, options }) as Promise<MemoryItem[]>;
  }

  add(scope: MemoryScope, input: AddInput): Promise<MemoryItem[]> {
    return this.call({ op: 'add', scope, input }) as Promise<MemoryItem[]>;
  }

  get(scope: MemoryScope, id: string): Promise<MemoryItem | undefined> {
    return this.call({ op: 'get', scope, id }) as Promise<MemoryItem | undefined>;
  }

  update(scope: MemoryScope, id: string, text: string): Promise<MemoryItem> {
    return this.call({ op: 'update', scope, id, text }) as Promise<MemoryItem>;
  }

  users(options: UsersOptions): Promise<UsersPage> {
    return this.call({ op: 'users', options }) as Promise<UsersPage>;
  }

  async delete(scope: MemoryScope, id: string): Promise<void> {
    await this.call({ op: 'delete', scope, id });
  }

  async deleteAll(scope: MemoryScope): Promise<void> {
    await this.call({ op: 'deleteAll', scope });
  }

  /**
   * Answers at once from the last known state, so `/health` never queues behind engine work in
   * the worker: the worker pushes every change of its health state, and a state older than a
   * second is refreshed in the background (the worker's guard probes the engine when its own
   * state is stale, which is how an outage's end is noticed).
   */
  async available(): Promise<boolean> {
    if (!this.alive || this.closing) return false;
    if (Date.now() - this.known.at > AVAILABILITY_REFRESH_MS && !this.refreshing) {
      this.refreshing = this.call({ op: 'available' })
        .then(
          (value) => this.remember(value === true),
          () => this.remember(false),
        )
        .finally(() => {
          this.refreshing = undefined;
        });
    }
    return this.known.available;
  }

  private remember(available: boolean): void {
    this.known = { available, at: Date.now() };
  }

  /** The engine thread's id (tells tests and logs which thread serves memory). */
  get threadId(): number {
    return this.worker.threadId;
  }

  /** Ends the engine thread abruptly, as a crash would: for fault-injection tests. */
  async crashThreadForTest(): Promise<void> {
    await this.worker.terminate();
  }

  /** Closes the engine's stores in the worker (bounded wait), then ends the thread. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.restartTimer);
      if (this.alive) {
        const worker = this.worker;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, CLOSE_TIMEOUT_MS);
          const done = (): void => {
            clearTimeout(timer);
            resolve();
          };
          worker.on('message', (m: FromWorker) => m.type === 'closed' && done());
          worker.once('exit', done);
          worker.postMessage({ type: 'close' });
        });
        this.alive = false;
        await worker.terminate();
      }
      this.failPending();
    })();
    return this.closing;
  }

  private call(call: EngineCall): Promise<unknown> {
    if (this.closing) return Promise.reject(new MemoryUnavailableError(true));
    if (!this.alive) return Promise.reject(new MemoryUnavailableError(true));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'call', id, call });
    });
  }

  private attach(worker: Worker): void {
    // The thread alone never keeps the process alive: the HTTP server does, and shutdown closes it.
    worker.unref();
    worker.on('message', (message: FromWorker) => this.onMessage(message));
    worker.on('error', (err) => this.logger.error('memory engine thread failed', { err }));
    worker.on('exit', (code) => {
      if (worker !== this.worker) return;
      this.alive = false;
      this.remember(false);
      this.failPending();
      if (this.closing) return;
      this.logger.error('memory engine thread exited; starting it again', { code });
      this.options.onAvailabilityChange?.(false);
      this.restartTimer = setTimeout(() => this.restart(), RESTART_DELAY_MS);
      this.restartTimer.unref();
    });
  }

  private restart(): void {
    if (this.closing) return;
    const worker = spawnEngineThread(this.data, this.options.threadScript);
    void WorkerMemoryService.waitReady(worker, this.logger).then((ready) => {
      if (this.closing) {
        void worker.terminate();
        return;
      }
      this.worker = worker;
      this.attach(worker);
      if (ready.unavailableReason === undefined) {
        this.alive = true;
        this.remember(ready.available ?? true);
        this.options.onAvailabilityChange?.(ready.available ?? true);
        this.logger.info('memory engine thread started again');
      } else {
        this.logger.error('memory engine thread could not start again', { reason: ready.unavailableReason });
        void worker.terminate();
      }
    });
  }

  private onMessage(message: FromWorker): void {
    switch (message.type) {
      case 'result': {
        const entry = this.pending.get(message.id);
        if (!entry) return;
        this.pending.delete(message.id);
        if (message.ok) entry.resolve(message.value);
        else entry.reject(fromWire(message.error));
        return;
      }
      case 'availability':
        this.remember(message.available);
        this.options.onAvailabilityChange?.(message.available);
        return;
      case 'log':
        forwardLog(this.logger, message);
        return;
      default:
        return;
    }
  }

  private failPending(): void {
    const entries = [...this.pending.values()];
    this.pending.clear();
    for (const entry of entries) entry.reject(new MemoryUnavailableError(true));
  }
}
