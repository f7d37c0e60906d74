/**
 * Builds everything a running proxy needs around a memory service and an authenticator: the
 * upstream forwarders (OpenAI's and Anthropic's), the chat path's memory with its save queue, and the app. `index.ts` and the
 * tests both come through here, so they run the same wiring.
 */
import type { RequestListener } from 'node:http';
import path from 'node:path';
import { createApp } from './app';
import type { Config } from './config';
import type { Authenticator } from './http/authenticate';
import type { SharedFailureCounter } from './http/failed-logins';
import type { RateLimitStoreFactory } from './http/rate-limit';
import type { Logger } from './logger';
import { createChatMemory } from './memory/chat-memory';
import type { PostgresSaveQueueOptions } from './memory/pg-save-queue';
import type { ExchangeQueue } from './memory/save-queue';
import { TraceStore } from './memory/trace-store';
import type { MemoryService } from './memory/types';
import { UnavailableMemoryService } from './memory/unavailable';
import type { Metrics } from './metrics';
import { Upstream } from './proxy/upstream';
import type { Readiness } from './routes/probes';

export interface AssembleOptions {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  memory: MemoryService;
  authenticator: Authenticator;
  rateLimitStore?: RateLimitStoreFactory | undefined;
  failedLoginCounter?: SharedFailureCounter | undefined;
  /** Save-queue tuning (tests shorten the backoffs). */
  queueOptions?: Partial<Omit<PostgresSaveQueueOptions, 'connectionString' | 'save'>> | undefined;
  /** Start the save queue's workers now (default true): drains what an earlier run left. */
  startQueue?: boolean | undefined;
  /** The process's shutdown state, for `/readyz`. */
  readiness?: Readiness | undefined;
}

export interface Assembled {
  app: RequestListener;
  upstream: Upstream;
  queue: ExchangeQueue | undefined;
  /** Closes the upstream connections, then the save queue (bounded wait), then the memory service. */
  close(): Promise<void>;
}

export function assemble(options: AssembleOptions): Assembled {
  const { config, logger, metrics, memory, authenticator } = options;
  // Only in development mode does a caller's own credential travel upstream.
  const forwardCallerCredential = (): boolean => !authenticator.required;
  const upstream = new Upstream({
    api: 'openai',
    baseUrl: config.upstream.baseUrl,
    timeoutMs: config.upstream.timeoutMs,
    maxBodyBytes: config.maxBodyBytes,
    apiKey: config.openaiApiKey,
    forwardCallerCredential,
    logger,
    metrics,
  });
  const anthropicUpstream = new Upstream({
    api: 'anthropic',
    baseUrl: config.anthropic.baseUrl,
    timeoutMs: config.upstream.timeoutMs,
    maxBodyBytes: config.maxBodyBytes,
    apiKey: config.anthropic.apiKey,
    forwardCallerCredential,
    // Callers authenticate with the proxy key, which Anthropic would refuse as "invalid x-api-key".
    missingKeyMessage: 'This proxy has no Anthropic API key: set ANTHROPIC_API_KEY to serve Anthropic requests',
    logger,
    metrics,
  });
  // The console's injection trace: only where there is memory to trace.
  const traces =
    config.console.traceRequests > 0 && !(memory instanceof UnavailableMemoryService)
      ? TraceStore.open(path.join(config.dataDir, 'traces.db'), { max: config.console.traceRequests, keepText: config.debug, logger })
      : undefined;
  const { chatMemory, queue } = createChatMemory({
    memory,
    dataDir: config.dataDir,
    metrics,
    logger,
    topK: config.memory.topK,
    threshold: config.memory.scoreThreshold,
    timeoutMs: config.memory.searchTimeoutMs,
    saveQueue: config.saveQueue,
    queueOptions: options.queueOptions,
    traces,
  });
  if (options.startQueue ?? true) queue?.start();
  const saveQueueStats = queue
    ? () => ({ depth: queue.depth(), failures: queue.failures, enqueue_failures: chatMemory.enqueueFailures, writable: !chatMemory.lastEnqueueFailed })
    : undefined;
  const app = createApp({
    config,
    logger,
    metrics,
    memory,
    authenticator,
    upstream,
    anthropicUpstream,
    chatMemory,
    saveQueueStats,
    rateLimitStore: options.rateLimitStore,
    failedLoginCounter: options.failedLoginCounter,
    traces,
    readiness: options.readiness,
  });
  return {
    app,
    upstream,
    queue,
    close: async () => {
      upstream.close();
      anthropicUpstream.close();
      // In-flight saves get a bounded wait; the rest stays durable for the next start.
      await queue?.stop();
      traces?.close();
      await memory.close();
    },
  };
}
