/**
 * What the middleware learns about a request and hands to the routes: its id, the caller, and
 * the route label used in logs and metrics.
 */
import type { RateLimitedEndpoint } from '../config';
import type { Api } from './api';

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

declare module 'node:http' {
  // The request carries what the middleware learned. Declared on node's IncomingMessage (which
  // Express's Request extends), because the /v1 hot path runs without Express; this is the one
  // place it happens.
  interface IncomingMessage {
    /** Set by the request-id middleware, first in the chain. */
    id: string;
    /** When the proxy started on this request (`process.hrtime.bigint()`), set with `id`. */
    receivedAt: bigint;
    /** Set by `authenticate`. */
    caller?: Caller;
    /** Route label for logs and metrics, set by the route that handles the request. */
    routeLabel?: string;
    /** The API a `/v1/*` request speaks (its error shape, its upstream); unset on the proxy's own routes. */
    api?: Api;
  }
}
