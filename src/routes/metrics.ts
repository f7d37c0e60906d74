/** `GET /metrics`: Prometheus text format. */
import type { RequestHandler } from 'express';
import type { Metrics } from '../metrics';
import type { MemoryService } from '../memory/types';

export function metricsRoute(deps: { metrics: Metrics; memory: MemoryService }): RequestHandler {
  return async (_req, res) => {
    const available = await deps.memory.available().catch(() => false);
    deps.metrics.memoryAvailable.set(available ? 1 : 0);
    res.setHeader('Content-Type', deps.metrics.registry.contentType);
    res.send(await deps.metrics.registry.metrics());
  };
}
