/**
 * What the middleware learns about a request and hands to the routes: its id, the caller, and
 * the route label used in logs and metrics.
 */
import type { RateLimitedEndpoint } from '../config';

export interface Caller {
  /** Stable id for logs and rate-limit keys: `token`, a registry key id, or `ip:<address>` in development mode. */
  readonly id: string;
  readonly kind: 'token' | 'key' | 'anonymous';
  /** Memory user this caller is bound to, if any: it may act only for that user. */
  readonly userId: string | undefined;
  /** May act for any user. */
  readonly admin: boolean;
  /** Per-endpoint requests-per-minute overrides. */
  readonly limits: Readonly<Partial<Record<RateLimitedEndpoint, number>>>;
}

declare global {
  // Express's request type is extended by declaration merging; this is the one place it happens.
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** Set by the request-id middleware, first in the chain. */
      id: string;
      /** Set by `authenticate`. */
      caller?: Caller;
      /** Route label for logs and metrics, set by the router that handles the request. */
      routeLabel?: string;
    }
  }
}
