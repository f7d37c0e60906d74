/**
 * Rate limits: one express-rate-limit middleware per endpoint, built once at start, counting per
 * caller id (never per `X-Forwarded-For`). Limits are requests per minute from `config/`, the
 * `RATE_LIMIT_*` variables, or the caller's own overrides. The store is pluggable: in-process by
 * default, shared (Redis) where the composition root passes one.
 */
import { rateLimit, type Store } from 'express-rate-limit';
import { RATE_LIMITED_ENDPOINTS, type Config, type RateLimitedEndpoint } from '../config';
import { RateLimitError } from '../errors';
import type { Logger } from '../logger';
import type { Caller } from './context';
import type { Handler } from './pipeline';

/** Makes the counter store for one endpoint; undefined means express-rate-limit's in-memory store. */
export type RateLimitStoreFactory = (endpoint: RateLimitedEndpoint) => Store | undefined;

export interface RateLimitOptions {
  config: Config;
  logger: Logger;
  storeFactory?: RateLimitStoreFactory | undefined;
  /** Called when a caller is refused, for metrics. */
  onLimited?: ((endpoint: RateLimitedEndpoint) => void) | undefined;
  /**
   * When the store cannot answer: true serves the request unlimited (fail open), false passes the
   * store's error on (the Redis store throws a 503). Default: `!config.rateLimits.failClosed`.
   */
  passOnStoreError?: boolean | undefined;
}

export type RateLimiters = Readonly<Record<RateLimitedEndpoint, Handler>>;

export function createRateLimiters(options: RateLimitOptions): RateLimiters {
  const { config, logger } = options;
  const passOnStoreError = options.passOnStoreError ?? !config.rateLimits.failClosed;
  // express-rate-limit logs every store error, once per request; the store reports failures
  // itself (rate-limited, counted in /metrics), so these lines stay at debug level.
  const limiterLogger = {
    error: (err: unknown, message?: string) => logger.debug(message ?? 'rate limiter error', { err }),
    warn: (err: unknown, message?: string) => logger.debug(message ?? 'rate limiter warning', { err }),
  };
  const build = (endpoint: RateLimitedEndpoint): Handler => {
    const configured = config.rateLimits.perMinute[endpoint];
    const perMinuteFor = (caller: Caller | undefined): number => caller?.limits[endpoint] ?? configured;
    const store = options.storeFactory?.(endpoint);
    // express-rate-limit only needs node's request and response once `keyGenerator`, `handler` and
    // `validate` are ours, so the same limiter serves the Express app and the /v1 hot path.
    const limiter = rateLimit({
      windowMs: config.rateLimits.windowMs,
      limit: (req) => perMinuteFor(req.caller),
      // The contract's headers: X-RateLimit-Limit/Remaining/Reset, the reset in Unix seconds.
      legacyHeaders: true,
      standardHeaders: false,
      keyGenerator: (req) => req.caller?.id ?? 'unknown',
      ...(store ? { store } : {}),
      passOnStoreError,
      logger: limiterLogger,
      handler: (req, _res, next) => {
        const info = (req as { rateLimit?: { resetTime?: Date } }).rateLimit;
        const retryAfter = info?.resetTime ? Math.max(1, Math.ceil((info.resetTime.getTime() - Date.now()) / 1000)) : 60;
        options.onLimited?.(endpoint);
        logger.warn('Rate limit exceeded', { request_id: req.id, caller: req.caller?.id, endpoint });
        next(new RateLimitError(perMinuteFor(req.caller), retryAfter));
      },
      // Keys are caller ids, not addresses, so the IP-based sanity checks do not apply; the others
      // are development-time checks of this very configuration, run on every request.
      validate: false,
    });
    return limiter as unknown as Handler;
  };
  return Object.freeze(
    Object.fromEntries(RATE_LIMITED_ENDPOINTS.map((endpoint) => [endpoint, build(endpoint)])) as Record<RateLimitedEndpoint, Handler>,
  );
}
