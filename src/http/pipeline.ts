/**
 * Middleware as plain node:http functions, and `chain` to run them in order.
 *
 * Every step here has Express's `(req, res, next)` shape but needs only node's request and
 * response, so the same functions serve both the Express app (admin API, health, metrics) and the
 * `/v1/*` hot path, which runs without Express: measured here, Express's per-request work alone
 * cost about as much CPU as a whole bare proxy (docs/benchmarks.md).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

export type Next = (err?: unknown) => void;
export type Handler = (req: IncomingMessage, res: ServerResponse, next: Next) => unknown;

/**
 * Runs handlers in order as one (errors, thrown or from a rejected promise, go to `next`).
 */
export function chain(...handlers: Handler[]): Handler {
  return (req, res, next) => {
    let i = 0;
    const step: Next = (err) => {
      if (err !== undefined && err !== null) {
        next(err);
        return;
      }
      const handler = handlers[i++];
      if (!handler) {
        next();
        return;
      }
      try {
        const result = handler(req, res, step);
        if (result instanceof Promise) result.catch(step);
      } catch (e) {
        step(e);
      }
    };
    step();
  };
}

/** The path of a request target without its query. */
export function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}
