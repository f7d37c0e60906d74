/**
 * Prometheus metrics (prom-client), one registry per app instance so that tests and several
 * in-process instances never share counters. Route labels come from a fixed set, so a caller
 * cannot blow up cardinality with made-up paths.
 */
import client from 'prom-client';

export interface Metrics {
  readonly registry: client.Registry;
  readonly httpRequests: client.Counter<'api' | 'route' | 'method' | 'status'>;
  readonly httpDuration: client.Histogram<'api' | 'route'>;
  readonly upstreamDuration: client.Histogram<'outcome'>;
  readonly overhead: client.Histogram<'api' | 'route'>;
  readonly upstreamErrors: client.Counter<'reason'>;
  readonly rateLimited: client.Counter<'endpoint'>;
  readonly rateLimitStoreErrors: client.Counter<'endpoint'>;
  readonly memorySearchDuration: client.Histogram<'outcome'>;
  readonly memoriesInjected: client.Histogram;
  readonly memoryAvailable: client.Gauge;
  readonly saveQueueDepth: client.Gauge;
  readonly saveFailures: client.Counter;
  readonly saveEnqueueFailures: client.Counter;
  readonly saveDead: client.Counter;
}

export function createMetrics(options: { collectDefault?: boolean } = {}): Metrics {
  const registry = new client.Registry();
  if (options.collectDefault ?? true) client.collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    httpRequests: new client.Counter({
      name: 'proxy_http_requests_total',
      help: 'Requests served, by API (openai, anthropic, or proxy for its own routes), route label, method and status code',
      labelNames: ['api', 'route', 'method', 'status'],
      registers,
    }),
    httpDuration: new client.Histogram({
      name: 'proxy_http_request_duration_seconds',
      help: 'Time from request arrival to response end, by API and route label',
      labelNames: ['api', 'route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    }),
    upstreamDuration: new client.Histogram({
      name: 'proxy_upstream_duration_seconds',
      help: 'Time from forwarding to the upstream response headers, by outcome (2xx, 4xx, 5xx, error, timeout)',
      labelNames: ['outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
    overhead: new client.Histogram({
      name: 'proxy_overhead_seconds',
      help: 'Time the proxy spent on a /v1 request before it left for the upstream (auth, limits, memory search, injection), as in X-Mem0-Overhead-Ms',
      labelNames: ['api', 'route'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    upstreamErrors: new client.Counter({
      name: 'proxy_upstream_errors_total',
      help: 'Upstream failures by reason (unreachable, timeout, reset, client_abort)',
      labelNames: ['reason'],
      registers,
    }),
    rateLimited: new client.Counter({
      name: 'proxy_rate_limited_total',
      help: 'Requests refused with 429, by endpoint',
      labelNames: ['endpoint'],
      registers,
    }),
    rateLimitStoreErrors: new client.Counter({
      name: 'proxy_rate_limit_store_errors_total',
      help: 'Rate-limit checks the shared store (Redis) could not answer, by endpoint (served unlimited, or 503 when failing closed)',
      labelNames: ['endpoint'],
      registers,
    }),
    memorySearchDuration: new client.Histogram({
      name: 'proxy_memory_search_duration_seconds',
      help: 'Memory search time on the chat path, by outcome (ok, timeout, error)',
      labelNames: ['outcome'],
      // Fine below 50 ms, where a warm search lands: a p50 read from the buckets is then within a
      // millisecond or two, not anywhere in 10–25 ms.
      buckets: [0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    memoriesInjected: new client.Histogram({
      name: 'proxy_memories_injected',
      help: 'Memories injected per chat request that searched memory (0 when none was found)',
      buckets: [0, 1, 2, 3, 5, 10, 20],
      registers,
    }),
    memoryAvailable: new client.Gauge({
      name: 'proxy_memory_service_available',
      help: '1 when the memory service is available, 0 otherwise',
      registers,
    }),
    saveQueueDepth: new client.Gauge({
      name: 'proxy_save_queue_depth',
      help: 'Exchanges waiting in the durable save queue',
      registers,
    }),
    saveFailures: new client.Counter({
      name: 'proxy_save_failures_total',
      help: 'Failed attempts to save an exchange as memory (each is retried)',
      registers,
    }),
    saveDead: new client.Counter({
      name: 'proxy_save_dead_total',
      help: "Exchanges the save queue gave up on (kept as dead with their last error): refused by the memory engine's model, or failing too often",
      registers,
    }),
    saveEnqueueFailures: new client.Counter({
      name: 'proxy_save_enqueue_failures_total',
      help: 'Completed exchanges that could not be written to the save queue (disk full, file unwritable): lost',
      registers,
    }),
  };
}
