/** `GET /health`: 200 while the process serves; `degraded` whenever memory is unavailable. */
import type { RequestHandler } from 'express';
import type { Metrics } from '../metrics';
import type { MemoryService } from '../memory/types';

export function healthRoute(deps: { memory: MemoryService; metrics: Metrics; version: string }): RequestHandler {
  return async (_req, res) => {
    const available = await deps.memory.available().catch(() => false);
    deps.metrics.memoryAvailable.set(available ? 1 : 0);
    res.json({
      status: available ? 'healthy' : 'degraded',
      memory_service_available: available,
      timestamp: new Date().toISOString(),
      version: deps.version,
    });
  };
}
