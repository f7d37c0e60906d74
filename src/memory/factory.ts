/**
 * Builds the memory service the configuration asks for (MEMORY_BACKEND):
 *   embedded / pgvector / qdrant -> mem0 OSS (mem0/) in its worker thread
 *   (worker/worker-service.ts), platform -> Mem0 Platform (platform-service.ts).
 * A backend that cannot be built (no key, a missing package, bad configuration) leaves the proxy
 * running with memory unavailable: 503 "Memory service is unavailable" on the memory endpoints,
 * `degraded` health, and one start-up log line saying why.
 */
import type { Config } from '../config';
import type { Logger } from '../logger';
import type { Metrics } from '../metrics';
import { createPlatformService } from './platform-service';
import type { GuardTuning } from './resilience';
import type { MemoryService } from './types';
import { UnavailableMemoryService } from './unavailable';
import { WorkerMemoryService } from './worker/worker-service';

export interface MemoryServiceOptions {
  /** When given, `proxy_memory_service_available` follows every change of availability. */
  metrics?: Metrics | undefined;
  /** Deadlines, retries and health-cache times (tests shorten them). */
  tuning?: Partial<GuardTuning> | undefined;
  /** The mem0 engine thread's script (WorkerServiceOptions.threadScript). */
  threadScript?: string | undefined;
}

export async function createMemoryService(config: Config, logger: Logger, options: MemoryServiceOptions = {}): Promise<MemoryService> {
  const backend = config.memory.backend;
  const metrics = options.metrics;
  const onAvailabilityChange = metrics ? (available: boolean) => metrics.memoryAvailable.set(available ? 1 : 0) : undefined;
  const common = { tuning: options.tuning, onAvailabilityChange };

  let service: MemoryService;
  try {
    // The mem0 OSS engine runs in its worker thread (extraction, embeddings, search and SQLite
    // commits off the thread that serves HTTP); the Platform backend is HTTP calls only.
    service =
      backend === 'platform'
        ? await createPlatformService(config, logger, common)
        : await WorkerMemoryService.start(config, logger, { ...common, threadScript: options.threadScript });
  } catch (err) {
    // Anything unforeseen while building must not stop the process: /v1/* still works.
    service = new UnavailableMemoryService(
      backend,
      `the memory engine failed to start: ${err instanceof Error ? err.message : String(err)}`,
    );
  }

  if (service instanceof UnavailableMemoryService) {
    logger.warn('memory service unavailable', { backend, reason: service.reason });
    metrics?.memoryAvailable.set(0);
  } else {
    logger.info('memory service ready', { backend });
  }
  return service;
}
