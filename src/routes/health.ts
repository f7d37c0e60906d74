/**
 * `GET /health`: 200 while the process serves; `degraded` whenever memory is unavailable, or the
 * last exchange could not be written to the save queue (a full disk loses exchanges). Beyond the
 * contract's fields it shows the save queue (exchanges waiting to become memories, failed save
 * attempts, exchanges that could not be queued, whether the queue takes writes).
 */
import type { RequestHandler } from 'express';
import type { Metrics } from '../metrics';
import type { MemoryService } from '../memory/types';

export interface SaveQueueStats {
  depth: number;
  failures: number;
  enqueue_failures: number;
  /** False when the last exchange could not be written (until one is). */
  writable: boolean;
}

export function healthRoute(deps: {
  memory: MemoryService;
  metrics: Metrics;
  version: string;
  saveQueueStats?: (() => SaveQueueStats) | undefined;
}): RequestHandler {
  return async (_req, res) => {
    const available = await deps.memory.available().catch(() => false);
    deps.metrics.memoryAvailable.set(available ? 1 : 0);
    const queue = deps.saveQueueStats?.();
    res.json({
      status: available && (queue?.writable ?? true) ? 'healthy' : 'degraded',
      memory_service_available: available,
      timestamp: new Date().toISOString(),
      version: deps.version,
      ...(queue ? { save_queue: queue } : {}),
    });
  };
}
