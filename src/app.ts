/**
 * createApp(deps): the whole HTTP surface, wired top to bottom. It never listens and reads no
 * environment; `index.ts` (and the tests, through the same door) pass everything in.
 *
 * A request's way: request id → request log → authenticate → rate limit (per endpoint, per
 * caller) → route. `/v1/chat/completions` reads and checks its body; every other `/v1/*` path is
 * forwarded untouched; the admin API parses JSON bodies only on its own routes.
 */
import express, { type ErrorRequestHandler, type RequestHandler } from 'express';
import type { Config } from './config';
import { AppError, NotFoundError, UnsupportedMediaTypeError, sendError, toAppError } from './errors';
import { authenticate, type Authenticator } from './http/authenticate';
import { createRateLimiters, type RateLimitStoreFactory } from './http/rate-limit';
import { requestId } from './http/request-id';
import { requestLog } from './http/request-log';
import type { Logger } from './logger';
import type { Metrics } from './metrics';
import type { MemoryService } from './memory/types';
import type { Upstream } from './proxy/upstream';
import { chatRoute } from './routes/chat';
import { healthRoute } from './routes/health';
import { memoryRoutes } from './routes/memory';
import { metricsRoute } from './routes/metrics';
import { passthroughRoute, v1Label } from './routes/proxy';

export interface AppDeps {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  memory: MemoryService;
  authenticator: Authenticator;
  upstream: Upstream;
  /** Shared rate-limit counters (Redis); in-process when absent. */
  rateLimitStore?: RateLimitStoreFactory | undefined;
}

const ADMIN_BODY_LIMIT = '1mb';

const label =
  (name: string): RequestHandler =>
  (req, _res, next) => {
    req.routeLabel = name;
    next();
  };

/** The admin API takes JSON only: anything else is 415 before a byte is parsed. */
const requireJson: RequestHandler = (req, _res, next) => {
  if (!req.is('application/json')) {
    next(new UnsupportedMediaTypeError('Content-Type must be application/json', 'Content-Type must be application/json'));
    return;
  }
  next();
};

export function createApp(deps: AppDeps): express.Express {
  const { config, logger, metrics, memory, upstream } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('trust proxy', config.server.trustProxy);

  app.use(requestId());
  app.use(requestLog(logger, metrics));
  app.use(authenticate(deps.authenticator, logger, config.server.trustProxy));

  const limits = createRateLimiters({
    config,
    logger,
    storeFactory: deps.rateLimitStore,
    onLimited: (endpoint) => metrics.rateLimited.inc({ endpoint }),
  });

  // Operations.
  app.get('/health', label('/health'), limits.health, healthRoute({ memory, metrics, version: config.version }));
  app.get('/metrics', label('/metrics'), metricsRoute({ metrics, memory }));

  // The memory admin API.
  const admin = memoryRoutes(memory, { searchLimit: 10, listLimit: 100 });
  const json = [requireJson, express.json({ limit: ADMIN_BODY_LIMIT, strict: true })];
  app.post('/search', label('/search'), limits.search, ...json, admin.search);
  app.post('/list', label('/list'), limits.list, ...json, admin.list);
  app.post('/remember', label('/remember'), limits.remember, ...json, admin.remember);
  app.post('/forget', label('/forget'), limits.forget, ...json, admin.forget);

  // The OpenAI-compatible proxy: specific routes first, the catch-all last.
  const rawBody = express.raw({ type: () => true, limit: config.maxBodyBytes });
  app.post('/v1/chat/completions', label('/v1/chat/completions'), limits.v1, rawBody, chatRoute(upstream));
  app.use('/v1', (req, _res, next) => {
    req.routeLabel = v1Label(req.path);
    next();
  }, limits.v1, passthroughRoute(upstream));

  app.use((req, _res, next) => {
    req.routeLabel ??= 'unmatched';
    next(new NotFoundError(`No route for ${req.method} ${req.path}`, 'No such endpoint'));
  });

  const errorHandler: ErrorRequestHandler = (err: unknown, req, res, _next) => {
    const appError = toAppError(err);
    if (!(err instanceof AppError) && appError.status >= 500) {
      logger.error('unhandled error', { request_id: req.id, route: req.routeLabel, err });
    }
    sendError(res, req.originalUrl, appError);
  };
  app.use(errorHandler);
  return app;
}
