/**
 * One log line and one metrics observation per request, written when the response closes
 * (finished or cut short): request id, caller, method, API, route label, status and duration.
 */
import type { Logger } from '../logger';
import type { Metrics } from '../metrics';
import type { Handler } from './pipeline';

export function requestLog(logger: Logger, metrics: Metrics): Handler {
  return (req, res, next) => {
    res.once('close', () => {
      const seconds = Number(process.hrtime.bigint() - req.receivedAt) / 1e9;
      const route = req.routeLabel ?? 'unmatched';
      const api = req.api ?? 'proxy';
      // A response closed before it finished was cut short (client gone, upstream reset).
      const status = res.writableFinished ? res.statusCode : 499;
      metrics.httpRequests.inc({ api, route, method: req.method ?? 'GET', status: String(status) });
      metrics.httpDuration.observe({ api, route }, seconds);
      logger.info('request', {
        request_id: req.id,
        caller: req.caller?.id ?? 'unauthenticated',
        method: req.method ?? 'GET',
        api,
        route,
        status,
        duration_ms: Math.round(seconds * 1e6) / 1e3,
      });
    });
    next();
  };
}
