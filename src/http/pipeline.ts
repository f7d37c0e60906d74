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

/** Told of an error a handler raised after it had already passed the request on (a bug in that handler). */
export type LateErrorReporter = (err: unknown, req: IncomingMessage) => void;

/**
 * Runs handlers in order as one (errors, thrown or from a rejected promise, go to `next`).
 * Each handler's `next` counts once: a handler that calls it twice, or calls it and then throws or
 * rejects, would otherwise run the rest of the chain again and answer one request twice. Such a
 * late error goes to `reportLate` (chainReporting) instead of being lost.
 */
export function chain(...handlers: Handler[]): Handler {
  return chainReporting(undefined, ...handlers);
}

/** `chain`, with late errors (see above) handed to `reportLate`. */
export function chainReporting(reportLate: LateErrorReporter | undefined, ...handlers: Handler[]): Handler {
  return (req, res, next) => {
    const stepFrom = (i: number): Next => {
      let called = false;
      return (err) => {
        if (called) {
          if (err !== undefined && err !== null) reportLate?.(err, req);
          return;
        }
        called = true;
        if (err !== undefined && err !== null) {
          next(err);
          return;
        }
        const handler = handlers[i];
        if (!handler) {
          next();
          return;
        }
        const step = stepFrom(i + 1);
        try {
          const result = handler(req, res, step);
          if (result instanceof Promise) result.catch(step);
        } catch (e) {
          step(e);
        }
      };
    };
    stepFrom(0)();
  };
}

/** The path of a request target without its query. */
export function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}
