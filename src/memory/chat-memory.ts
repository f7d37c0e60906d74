/**
 * Memory on the chat path (contract §3): recall with a deadline before forwarding, and queue the
 * exchange for saving after a completed reply. Both fail open: a chat never fails, and never
 * waits, because of memory.
 */
import path from 'node:path';
import { BadRequestError } from '../errors';
import type { Logger } from '../logger';
import type { Metrics } from '../metrics';
import { MAX_CONTENT_CHARS } from './limits';
import type { Config } from '../config';
import { PostgresSaveQueue, type PostgresSaveQueueOptions } from './pg-save-queue';
import { SaveQueue, type ExchangeQueue, type SaveQueueOptions } from './save-queue';
import { buildMemoryBlock } from './injection';
import type { TraceApi, TraceInput, TraceStore } from './trace-store';
import type { ChatMessage, MemoryItem, MemoryScope, MemoryService } from './types';
import { UnavailableMemoryService } from './unavailable';
import { TIMED_OUT, waitAtMost } from '../util/deadline';

/** `X-Mem0-Memory`: on (default), off, read (inject only), write (save only). */
export type MemoryMode = 'on' | 'off' | 'read' | 'write';

export function parseMemoryMode(header: string | string[] | undefined): MemoryMode {
  const value = (Array.isArray(header) ? header[0] : header)?.trim().toLowerCase();
  if (value === undefined || value === '') return 'on';
  if (value === 'on' || value === 'off' || value === 'read' || value === 'write') return value;
  throw new BadRequestError('X-Mem0-Memory must be one of on, off, read, write');
}

export const reads = (mode: MemoryMode): boolean => mode === 'on' || mode === 'read';
export const writes = (mode: MemoryMode): boolean => mode === 'on' || mode === 'write';

export interface ChatMemoryOptions {
  memory: MemoryService;
  /** Undefined when memory is off for good (never initialised): nothing is queued. */
  queue: ExchangeQueue | undefined;
  metrics: Metrics;
  logger: Logger;
  topK: number;
  threshold: number;
  timeoutMs: number;
  /** The injection trace (console); absent when tracing is off. */
  traces?: TraceStore | undefined;
}

/** Recalls the console's search percentiles are taken over. */
const SEARCH_WINDOW = 1000;

/** What a recall found, and how long it took (milliseconds, timeouts and failures included). */
export interface Recalled {
  memories: MemoryItem[];
  ms: number;
}

/**
 * The idempotency key of an exchange: the caller, the memory scope and the request id together,
 * so one caller's replayed request is saved once while two users' exchanges that happen to carry
 * the same `X-Request-ID` under one key are both saved.
 */
export function exchangeId(callerId: string, scope: MemoryScope, requestId: string): string {
  return JSON.stringify([callerId, scope.userId, scope.agentId ?? null, scope.runId ?? null, requestId]);
}

export interface Exchange {
  /** Idempotency key (`exchangeId`): the same exchange is saved once. */
  id: string;
  scope: MemoryScope;
  userText: string;
  /** The assistant's reply as the proxy captured it (proxy/capture.ts); only its text is saved. */
  reply: { readonly text: string };
  metadata: Record<string, unknown>;
}

/** `text` cut to MAX_CONTENT_CHARS UTF-16 units, never inside a surrogate pair. */
function clip(text: string): string {
  if (text.length <= MAX_CONTENT_CHARS) return text;
  const end = /[\uD800-\uDBFF]/.test(text.charAt(MAX_CONTENT_CHARS - 1)) ? MAX_CONTENT_CHARS - 1 : MAX_CONTENT_CHARS;
  return text.slice(0, end);
}

export class ChatMemory {
  /** Exchanges that could not be queued (lost), since start. */
  enqueueFailures = 0;
  /** Whether the last exchange offered to the queue could not be written (the disk is full, say). */
  lastEnqueueFailed = false;
  /** The last save attempt's error (the console shows it), null before any failure. */
  lastSaveError: string | null = null;
  /** Exchanges the queue gave up on, since start. */
  deadSaves = 0;
  /** The last SEARCH_WINDOW recall durations (ms), a ring, for the console's p50/p95. */
  private readonly searchWindow: number[] = [];
  private searchNext = 0;
  private chats = 0;
  private injectedTotal = 0;

  constructor(private options: ChatMemoryOptions) {}

  /** Sets the save queue once it is built (it reports back to this object). */
  attachQueue(queue: ExchangeQueue | undefined): void {
    this.options = { ...this.options, queue };
  }

  /** Whether memory can work at all in this process. */
  get enabled(): boolean {
    return this.options.queue !== undefined;
  }

  /**
   * The user's memories relevant to `query`, or none when the search fails or takes longer than
   * the budget (the search itself may go on in the background; its result is then dropped).
   */
  async recall(scope: MemoryScope, query: string, requestId: string): Promise<Recalled> {
    const { memory, metrics, logger, topK, threshold, timeoutMs } = this.options;
    if (topK === 0) return { memories: [], ms: 0 };
    const started = process.hrtime.bigint();
    const ms = (): number => Number(process.hrtime.bigint() - started) / 1e6;
    try {
      const result = await waitAtMost(memory.search(scope, query, { limit: topK, threshold }), timeoutMs);
      if (result === TIMED_OUT) {
        metrics.memorySearchDuration.observe({ outcome: 'timeout' }, ms() / 1000);
        logger.warn('memory search past its budget; answering without memories', { request_id: requestId, budget_ms: timeoutMs });
        return { memories: [], ms: ms() };
      }
      const took = ms();
      metrics.memorySearchDuration.observe({ outcome: 'ok' }, took / 1000);
      this.searchWindow[this.searchNext] = took;
      this.searchNext = (this.searchNext + 1) % SEARCH_WINDOW;
      return { memories: result, ms: took };
    } catch (err) {
      metrics.memorySearchDuration.observe({ outcome: 'error' }, ms() / 1000);
      logger.warn('memory search failed; answering without memories', {
        request_id: requestId,
        error: err instanceof Error ? err.message : String(err),
      });
      return { memories: [], ms: ms() };
    }
  }

  /**
   * The same search the chat path makes (top-k, threshold), without its deadline and failing
   * loudly: the console's "what would be injected?".
   */
  preview(scope: MemoryScope, query: string): Promise<MemoryItem[]> {
    const { memory, topK, threshold } = this.options;
    if (topK === 0) return Promise.resolve([]);
    return memory.search(scope, query, { limit: topK, threshold });
  }

  /** The chat path's recall settings, as the console shows them. */
  get recallSettings(): { topK: number; threshold: number } {
    return { topK: this.options.topK, threshold: this.options.threshold };
  }

  /**
   * The memory step of a memory route, before forwarding: recall for `text` (when the mode reads),
   * build the block, let `inject` put it into the request (the body to forward, or undefined when
   * it cannot take the block), and report the request (metrics, injection trace). Returns the body
   * to forward (undefined: the caller's, unchanged) and the memories that went in.
   */
  async injectInto(
    request: {
      requestId: string;
      callerId: string;
      scope: MemoryScope;
      mode: MemoryMode;
      text: string;
      api: TraceApi;
      route: string;
      model: unknown;
    },
    maxBlockChars: number,
    inject: (blockText: string) => Buffer | undefined,
  ): Promise<{ body: Buffer | undefined; injected: MemoryItem[] }> {
    const recalled = reads(request.mode) ? await this.recall(request.scope, request.text, request.requestId) : undefined;
    const block = recalled && buildMemoryBlock(recalled.memories, maxBlockChars);
    const body = block ? inject(block.text) : undefined;
    const injected = block && body ? block.included : [];
    this.noteRequest({
      requestId: request.requestId,
      exchangeId: exchangeId(request.callerId, request.scope, request.requestId),
      callerId: request.callerId,
      scope: request.scope,
      api: request.api,
      route: request.route,
      model: request.model,
      searchMs: recalled?.ms,
      recalled: recalled?.memories ?? [],
      injected,
      prompt: request.text,
    });
    return { body, injected };
  }

  /**
   * Reports one memory-route request: how many memories went in (0 included) for /metrics when
   * it recalled, and the request for the injection trace.
   */
  private noteRequest(input: TraceInput): void {
    if (input.searchMs !== undefined) {
      this.options.metrics.memoriesInjected.observe(input.injected.length);
      this.chats++;
      this.injectedTotal += input.injected.length;
    }
    this.options.traces?.record(input);
  }

  /** Search time percentiles over the last successful recalls, and memories injected per chat since start. */
  recallStats(): {
    search: { count: number; p50_ms: number | null; p95_ms: number | null };
    injected: { chats: number; mean: number | null };
  } {
    const sorted = [...this.searchWindow].sort((a, b) => a - b);
    const at = (q: number): number | null => {
      const v = sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
      return v === undefined ? null : Math.round(v * 10) / 10;
    };
    return {
      search: { count: sorted.length, p50_ms: at(0.5), p95_ms: at(0.95) },
      injected: { chats: this.chats, mean: this.chats === 0 ? null : Math.round((this.injectedTotal / this.chats) * 100) / 100 },
    };
  }

  /**
   * Queues a completed exchange for saving: committed when this returns (SQLite) or when the
   * promise it returns settles (Postgres). It never throws or rejects: a failure is counted
   * (/metrics, /health) and logged. A reply without text saves the user turn alone.
   */
  remember(exchange: Exchange): void | Promise<void> {
    const { queue } = this.options;
    if (!queue) return undefined;
    // An exchange is queued at most MAX_CONTENT_CHARS per turn (a pasted document keeps its
    // beginning): the queue stays bounded and extraction gets what a model can read.
    const messages: ChatMessage[] = [{ role: 'user', content: clip(exchange.userText) }];
    if (exchange.reply.text.trim() !== '') messages.push({ role: 'assistant', content: clip(exchange.reply.text) });
    let queued: boolean | Promise<boolean>;
    try {
      queued = queue.enqueue({ id: exchange.id, scope: exchange.scope, messages, metadata: exchange.metadata });
    } catch (err) {
      this.enqueueFailed(exchange, err);
      return undefined;
    }
    if (typeof queued === 'boolean') {
      this.enqueued(exchange, queued);
      return undefined;
    }
    return queued.then(
      (q) => this.enqueued(exchange, q),
      (err: unknown) => this.enqueueFailed(exchange, err),
    );
  }

  private enqueued(exchange: Exchange, queued: boolean): void {
    this.lastEnqueueFailed = false;
    if (queued) this.options.traces?.queued(exchange.id);
    else this.options.logger.debug('exchange already queued or saved', { request_id: exchange.metadata['request_id'] });
  }

  private enqueueFailed(exchange: Exchange, err: unknown): void {
    this.enqueueFailures++;
    this.lastEnqueueFailed = true;
    this.options.metrics.saveEnqueueFailures.inc();
    this.options.traces?.failed(exchange.id, 'could not be queued');
    this.options.logger.error('could not queue an exchange for saving; it is lost', {
      request_id: exchange.metadata['request_id'],
      error: err instanceof Error ? err.message : String(err),
    });
  }
}

/**
 * The chat path's memory and its durable save queue (SQLite under DATA_DIR, or Postgres shared by
 * the instances), or a disabled one when the memory service was never initialised (nothing could
 * ever be saved; the queue would only grow). The caller starts and stops the queue.
 */
export function createChatMemory(options: {
  memory: MemoryService;
  dataDir: string;
  metrics: Metrics;
  logger: Logger;
  topK: number;
  threshold: number;
  timeoutMs: number;
  /** Where the queue lives (default: SQLite under dataDir). */
  saveQueue?: Config['saveQueue'] | undefined;
  /** Queue tuning (backoff, concurrency); tests shorten the delays. */
  queueOptions?: Partial<Omit<PostgresSaveQueueOptions, 'connectionString' | 'save'>> | undefined;
  traces?: TraceStore | undefined;
}): { chatMemory: ChatMemory; queue: ExchangeQueue | undefined } {
  const { memory, metrics, logger, traces } = options;
  const chatMemory = new ChatMemory({ ...options, queue: undefined });
  let queue: ExchangeQueue | undefined;
  if (!(memory instanceof UnavailableMemoryService)) {
    const common: Omit<SaveQueueOptions, 'path'> = {
      save: async (job) => {
        const created = await memory.add(job.scope, { messages: job.messages, metadata: job.metadata, infer: true, background: true });
        traces?.saved(
          job.id,
          created.map((m) => m.id),
        );
        return created;
      },
      onDepth: (depth) => metrics.saveQueueDepth.set(depth),
      logger,
      ...options.queueOptions,
      onFailure: (err) => {
        metrics.saveFailures.inc();
        chatMemory.lastSaveError = err instanceof Error ? err.message.slice(0, 500) : String(err).slice(0, 500);
        options.queueOptions?.onFailure?.(err);
      },
      onDead: (jobId, error) => {
        metrics.saveDead.inc();
        chatMemory.deadSaves++;
        traces?.failed(jobId, error);
        options.queueOptions?.onDead?.(jobId, error);
      },
    };
    const shared = options.saveQueue;
    // Also where a shared queue keeps what its database cannot take now, and finds what this
    // instance queued locally before (both moved in).
    const localQueueFile = path.join(options.dataDir, 'save-queue.db');
    queue =
      shared?.kind === 'postgres' && shared.url !== undefined
        ? new PostgresSaveQueue({
            ...common,
            leaseMs: shared.leaseMs,
            ...options.queueOptions,
            connectionString: shared.url,
            localPath: localQueueFile,
          })
        : new SaveQueue({ ...common, path: localQueueFile });
  }
  chatMemory.attachQueue(queue);
  return { chatMemory, queue };
}
