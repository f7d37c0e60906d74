/**
 * The composition root: builds every part of a running proxy from the configuration (metrics, the
 * key registry and authenticator, the memory service, the shared Redis limits, the upstream
 * forwarders, the chat path's memory with its save queue, the console's trace store, the app) and
 * closes them in order. `index.ts` and the tests both come through here, so they run the same
 * wiring; a test replaces a part by passing it (its memory, its authenticator, its limit store).
 */
import type { RequestListener } from 'node:http';
import path from 'node:path';
import { createApp } from './app';
import type { Config } from './config';
import type { Authenticator } from './http/authenticate';
import type { SharedFailureCounter } from './http/failed-logins';
import type { RateLimitStoreFactory } from './http/rate-limit';
import { createRedisRateLimitStore, type RedisRateLimitStore } from './http/redis-store';
import { combinedAuthenticator } from './keys/authenticator';
import { KeyRegistry } from './keys/registry';
import type { Logger } from './logger';
import { createChatMemory } from './memory/chat-memory';
import { createMemoryService } from './memory/factory';
import type { PostgresSaveQueueOptions } from './memory/pg-save-queue';
import type { ExchangeQueue } from './memory/save-queue';
import { TraceStore } from './memory/trace-store';
import type { MemoryService } from './memory/types';
import { UnavailableMemoryService } from './memory/unavailable';
import { createMetrics, type Metrics } from './metrics';
import { Upstream } from './proxy/upstream';
import { Readiness } from './routes/probes';

/** How long `assemble` waits for Redis at start before serving with limits failing open (or closed). */
const REDIS_START_WAIT_MS = 3000;

export interface AssembleOptions {
  config: Config;
  logger: Logger;
  /** Default: a registry with the process's default metrics. */
  metrics?: Metrics | undefined;
  /** Default: the backend MEMORY_BACKEND names (`memory/factory.ts`). */
  memory?: MemoryService | undefined;
  /** Default: AUTH_TOKEN and the KEYS_FILE registry. */
  authenticator?: Authenticator | undefined;
  /** Default: Redis at REDIS_URL when it is set, else each limiter counts in this process. */
  rateLimitStore?: RateLimitStoreFactory | undefined;
  failedLoginCounter?: SharedFailureCounter | undefined;
  /** Save-queue tuning (tests shorten the backoffs). */
  queueOptions?: Partial<Omit<PostgresSaveQueueOptions, 'connectionString' | 'save'>> | undefined;
  /** Start the save queue's workers now (default true): drains what an earlier run left. */
  startQueue?: boolean | undefined;
}

export interface Assembled {
  app: RequestListener;
  metrics: Metrics;
  memory: MemoryService;
  upstream: Upstream;
  queue: ExchangeQueue | undefined;
  /** The process's shutdown state, for `/readyz`. */
  readiness: Readiness;
  /** Re-reads `KEYS_FILE` (SIGHUP); a bad file keeps the keys in effect. No-op with a given authenticator. */
  reloadKeys(): void;
  /** Closes the upstream connections, the save queue (bounded wait), the traces, the memory service, then Redis. */
  close(): Promise<void>;
}

/** A bad key registry file throws `KeyRegistryError` here: the process refuses to start. */
export async function assemble(options: AssembleOptions): Promise<Assembled> {
  const { config, logger } = options;
  const metrics = options.metrics ?? createMetrics();
  let registry: KeyRegistry | undefined;
  let authenticator = options.authenticator;
  if (authenticator === undefined) {
    registry = KeyRegistry.open({ file: config.keysFile, logger });
    authenticator = combinedAuthenticator(config.authToken, registry);
    if (!authenticator.required) {
      logger.warn('AUTH_TOKEN is not set and there is no key registry: development mode, every caller is accepted without authentication');
    } else if (config.openaiApiKey === undefined) {
      // Authentication is required, so the caller's credential is never forwarded (see below).
      logger.warn('OPENAI_API_KEY is not set: requests reach the upstream without credentials');
    }
  }
  const memory = options.memory ?? (await createMemoryService(config, logger, { metrics }));
  const redis = options.rateLimitStore === undefined ? await openRedis(config, logger, metrics) : undefined;
  const rateLimitStore = options.rateLimitStore ?? redis?.storeFactory;
  const failedLoginCounter = options.failedLoginCounter ?? redis?.failureCounter;
  // /readyz reports not ready from the first moment of shutdown.
  const readiness = new Readiness();
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
    ? () => ({
        depth: queue.depth(),
        failures: queue.failures,
        enqueue_failures: chatMemory.enqueueFailures,
        writable: !chatMemory.lastEnqueueFailed,
      })
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
    rateLimitStore,
    failedLoginCounter,
    traces,
    readiness,
  });
  return {
    app,
    metrics,
    memory,
    upstream,
    queue,
    readiness,
    reloadKeys: () => registry?.reload(),
    close: async () => {
      upstream.close();
      anthropicUpstream.close();
      // In-flight saves get a bounded wait; the rest stays durable for the next start.
      await queue?.stop();
      traces?.close();
      await memory.close();
      await redis?.close();
    },
  };
}

/**
 * With REDIS_URL the rate-limit counters are shared by every instance. Redis being down at start
 * does not stop the proxy: limits fail open (or closed, RATE_LIMIT_FAIL_CLOSED) until it is back.
 */
async function openRedis(config: Config, logger: Logger, metrics: Metrics): Promise<RedisRateLimitStore | undefined> {
  if (!config.redisUrl) return undefined;
  const redis = createRedisRateLimitStore({
    url: config.redisUrl,
    prefix: config.rateLimits.redisPrefix,
    logger,
    onStoreError: (endpoint) => metrics.rateLimitStoreErrors.inc({ endpoint }),
  });
  if (!(await redis.ready(REDIS_START_WAIT_MS))) {
    logger.warn(
      config.rateLimits.failClosed
        ? 'Redis is not reachable yet: rate-limited endpoints answer 503 until it is'
        : 'Redis is not reachable yet: requests are served without rate limits until it is',
    );
  }
  return redis;
}
