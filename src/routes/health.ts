/**
 * `GET /health`: 200 while the process serves; `degraded` whenever memory is unavailable. Beyond
 * the contract's fields it shows the save queue (exchanges waiting to become memories, failed
 * attempts so far).
 */
import type { RequestHandler } from 'express';
import type { Metrics } from '../metrics';
import type { MemoryService } from '../memory/types';

export function healthRoute(deps: {
  memory: MemoryService;
  metrics: Metrics;
  version: string;
  saveQueueStats?: (() => { depth: number; failures: number }) | undefined;
}): RequestHandler {
  return async (_req, res) => {
    const available = await deps.memory.available().catch(() => false);
    deps.metrics.memoryAvailable.set(available ? 1 : 0);
    res.json({
      status: available ? 'healthy' : 'degraded',
      memory_service_available: available,
      timestamp: new Date().toISOString(),
      version: deps.version,
      ...(deps.saveQueueStats ? { save_queue: deps.saveQueueStats() } : {}),
    });
  };
}
