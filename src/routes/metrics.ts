/**
 * `GET /metrics`: Prometheus text format. With callers authenticated, for admin callers only (the
 * `AUTH_TOKEN`, admin keys): the figures span every tenant.
 */
import type { RequestHandler } from 'express';
import { ForbiddenError } from '../errors';
import type { Metrics } from '../metrics';
import type { MemoryService } from '../memory/types';

export function metricsRoute(deps: { metrics: Metrics; memory: MemoryService }): RequestHandler {
  return async (req, res, next) => {
    if (req.caller && !req.caller.admin) {
      next(new ForbiddenError('Metrics are for admin callers', 'Metrics are for admin callers'));
      return;
    }
    const available = await deps.memory.available().catch(() => false);
    deps.metrics.memoryAvailable.set(available ? 1 : 0);
    res.setHeader('Content-Type', deps.metrics.registry.contentType);
    res.send(await deps.metrics.registry.metrics());
  };
}
