/**
 * Memory on the chat path (contract §3): recall with a deadline before forwarding, and queue the
 * exchange for saving after a completed reply. Both fail open: a chat never fails, and never
 * waits, because of memory.
 */
import path from 'node:path';
import { BadRequestError } from '../errors';
import type { Logger } from '../logger';
import type { Metrics } from '../metrics';
import type { CapturedReply } from '../proxy/capture';
import { MAX_CONTENT_CHARS } from './limits';
import { SaveQueue, type SaveQueueOptions } from './save-queue';
import type { ChatMessage, MemoryItem, MemoryScope, MemoryService } from './types';
import { UnavailableMemoryService } from './unavailable';

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
  queue: SaveQueue | undefined;
  metrics: Metrics;
  logger: Logger;
  topK: number;
  threshold: number;
  timeoutMs: number;
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
  reply: CapturedReply;
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

  constructor(private readonly options: ChatMemoryOptions) {}

  /** Whether memory can work at all in this process. */
  get enabled(): boolean {
    return this.options.queue !== undefined;
  }

  /**
   * The user's memories relevant to `query`, or none when the search fails or takes longer than
   * the budget (the search itself may go on in the background; its result is then dropped).
   */
  async recall(scope: MemoryScope, query: string, requestId: string): Promise<MemoryItem[]> {
    const { memory, metrics, logger, topK, threshold, timeoutMs } = this.options;
    if (topK === 0) return [];
    const started = process.hrtime.bigint();
    const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    try {
      const result = await Promise.race([memory.search(scope, query, { limit: topK, threshold }), deadline]);
      if (result === 'timeout') {
        metrics.memorySearchDuration.observe({ outcome: 'timeout' }, seconds());
        logger.warn('memory search past its budget; answering without memories', { request_id: requestId, budget_ms: timeoutMs });
        return [];
      }
      metrics.memorySearchDuration.observe({ outcome: 'ok' }, seconds());
      return result;
    } catch (err) {
      metrics.memorySearchDuration.observe({ outcome: 'error' }, seconds());
      logger.warn('memory search failed; answering without memories', { request_id: requestId, error: err instanceof Error ? err.message : String(err) });
      return [];
    } finally {
      clearTimeout(timer);
    }
  }

  /** Counts how many memories went into a request (0 included) for /metrics. */
  injected(count: number): void {
    this.options.metrics.memoriesInjected.observe(count);
  }

  /**
   * Queues a completed exchange for saving (durably, before returning). A reply without text
   * saves the user turn alone.
   */
  remember(exchange: Exchange): void {
    const { queue, logger } = this.options;
    if (!queue) return;
    // An exchange is queued at most MAX_CONTENT_CHARS per turn (a pasted document keeps its
    // beginning): the queue file stays bounded and extraction gets what a model can read.
    const messages: ChatMessage[] = [{ role: 'user', content: clip(exchange.userText) }];
    if (exchange.reply.text.trim() !== '') messages.push({ role: 'assistant', content: clip(exchange.reply.text) });
    try {
      const queued = queue.enqueue({ id: exchange.id, scope: exchange.scope, messages, metadata: exchange.metadata });
      this.lastEnqueueFailed = false;
      if (!queued) logger.debug('exchange already queued or saved', { request_id: exchange.metadata['request_id'] });
    } catch (err) {
      // The response has gone out already: the loss is counted (/metrics, /health) and logged, never thrown.
      this.enqueueFailures++;
      this.lastEnqueueFailed = true;
      this.options.metrics.saveEnqueueFailures.inc();
      logger.error('could not queue an exchange for saving; it is lost', { request_id: exchange.metadata['request_id'], error: err instanceof Error ? err.message : String(err) });
    }
  }
}

/**
 * The chat path's memory and its durable save queue (under DATA_DIR), or a disabled one when the
 * memory service was never initialised (nothing could ever be saved; the queue would only grow).
 * The caller starts and stops the queue.
 */
export function createChatMemory(options: {
  memory: MemoryService;
  dataDir: string;
  metrics: Metrics;
  logger: Logger;
  topK: number;
  threshold: number;
  timeoutMs: number;
  /** Queue tuning (backoff, concurrency); tests shorten the delays. */
  queueOptions?: Partial<Omit<SaveQueueOptions, 'path' | 'save'>> | undefined;
}): { chatMemory: ChatMemory; queue: SaveQueue | undefined } {
  const { memory, metrics, logger } = options;
  let queue: SaveQueue | undefined;
  if (!(memory instanceof UnavailableMemoryService)) {
    queue = new SaveQueue({
      path: path.join(options.dataDir, 'save-queue.db'),
      save: (job) => memory.add(job.scope, { messages: job.messages, metadata: job.metadata, infer: true }),
      onDepth: (depth) => metrics.saveQueueDepth.set(depth),
      onFailure: () => metrics.saveFailures.inc(),
      onDead: () => metrics.saveDead.inc(),
      logger,
      ...options.queueOptions,
    });
  }
  return { chatMemory: new ChatMemory({ ...options, queue }), queue };
}
