/**
 * createApp(deps): the whole HTTP surface, wired top to bottom. It never listens and reads no
 * environment; `index.ts` (and the tests, through the same door) pass everything in.
 *
 * A request's way: request id → request log → cross-origin check → authenticate → rate limit
 * (per endpoint, per caller) → route. `/v1/*` speaks OpenAI's API or Anthropic's (`http/api.ts` tells them apart),
 * each with its own upstream: `/v1/chat/completions`, `/v1/responses` and Anthropic's
 * `/v1/messages` read and check their body and carry memory; every other `/v1/*` path is forwarded
 * untouched; the admin API parses JSON bodies only on its own routes; `/mcp` serves the same
 * memory to MCP clients. `HEAD /` and `HEAD /api/hello` (Claude Code's connectivity probe) get an
 * empty 200 before anything else; the orchestrator's probes (`/livez`, `/readyz`) and the console's
 * static files (`/ui`) are served after the origin check but before authentication.
 *
 * `/v1/*` (the traffic) runs through a plain chain of the same middleware without Express;
 * everything else is an Express app. The split is for speed: Express's own per-request work cost
 * about as much CPU as a whole bare proxy (docs/benchmarks.md).
 */
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import express, { type ErrorRequestHandler, type RequestHandler } from 'express';
import type { Config } from './config';
import { AppError, NotFoundError, UnsupportedMediaTypeError, sendError, toAppError } from './errors';
import { authenticate, type Authenticator } from './http/authenticate';
import { FailedLogins, type SharedFailureCounter } from './http/failed-logins';
import { createRateLimiters, type RateLimitStoreFactory } from './http/rate-limit';
import { requestId } from './http/request-id';
import { requestLog } from './http/request-log';
import { sameOrigin } from './http/same-origin';
import { securityHeaders } from './http/security-headers';
import { chainReporting, pathOf, type Handler } from './http/pipeline';
import type { Logger } from './logger';
import type { Metrics } from './metrics';
import type { ChatMemory } from './memory/chat-memory';
import type { MemoryService } from './memory/types';
import { apiOf, isV1 } from './http/api';
import { setOverheadHeader, type Upstream } from './proxy/upstream';
import type { TraceStore } from './memory/trace-store';
import { memoryChatRoute } from './routes/chat';
import { consoleRoutes } from './routes/console';
import { messagesRoute } from './routes/messages';
import { healthRoute, type SaveQueueStats } from './routes/health';
import { mcpRoutes } from './routes/mcp';
import { memoryRoutes } from './routes/memory';
import { metricsRoute } from './routes/metrics';
import { probeRoutes, type Readiness } from './routes/probes';
import { passthroughRoute, routeLabel } from './routes/proxy';
import { uiRoute } from './routes/ui';

export interface AppDeps {
  config: Config;
  logger: Logger;
  metrics: Metrics;
  memory: MemoryService;
  authenticator: Authenticator;
  /** OpenAI (or an OpenAI-compatible server). */
  upstream: Upstream;
  /** Anthropic (or an Anthropic-compatible server). */
  anthropicUpstream: Upstream;
  /** Memory on the chat path (recall and the save queue). */
  chatMemory: ChatMemory;
  /** Save-queue figures for /health; absent when nothing is ever saved. */
  saveQueueStats?: (() => SaveQueueStats) | undefined;
  /** Shared rate-limit counters (Redis); in-process when absent. */
  rateLimitStore?: RateLimitStoreFactory | undefined;
  /** Refused credentials per address shared by the instances (Redis); in-process when absent. */
  failedLoginCounter?: SharedFailureCounter | undefined;
  /** The injection trace the console shows; absent when tracing is off. */
  traces?: TraceStore | undefined;
  /** Set by the process when shutdown begins (`/readyz` then answers 503); absent: never. */
  readiness?: Readiness | undefined;
}

const ADMIN_BODY_LIMIT = '1mb';

/** The admin API takes JSON only: anything else is 415 before a byte is parsed. */
const requireJson: RequestHandler = (req, _res, next) => {
  if (!req.is('application/json')) {
    next(new UnsupportedMediaTypeError('Content-Type must be application/json', 'Content-Type must be application/json'));
    return;
  }
  next();
};

export function createApp(deps: AppDeps): RequestListener {
  const { config, logger, metrics, memory, upstream } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('trust proxy', config.server.trustProxy);

  // A handler that fails after passing the request on has a bug: the request goes on, the error is logged.
  const reportLate = (err: unknown, req: IncomingMessage): void => {
    logger.error('a request handler failed after passing the request on', { err, request_id: req.id, route: req.routeLabel });
  };
  const chain = (...handlers: Handler[]): Handler => chainReporting(reportLate, ...handlers);
  // The steps every request takes: identified, logged, checked for origin, then authenticated.
  const identified = chain(
    requestId(),
    (req, _res, next) => {
      req.routeLabel = routeLabel(pathOf(req), req.api);
      next();
    },
    requestLog(logger, metrics),
    sameOrigin(config.allowedOrigins, config.allowedHosts),
  );
  const front = chain(
    identified,
    authenticate(
      deps.authenticator,
      logger,
      config.server.trustProxy,
      new FailedLogins(config.rateLimits.failedAuthPerMinute, { shared: deps.failedLoginCounter }),
    ),
  );
  // The proxy's own JSON endpoints (admin API, health, metrics, their errors) carry security
  // headers; /v1/* never reaches this app, so upstream headers there pass through unchanged.
  app.use(securityHeaders() as RequestHandler);
  // The console's page and scripts hold no data: served before authentication (the page asks for
  // the token and sends it to the API itself), with their own CSP.
  const ui = uiRoute(config.console.uiDir);
  app.get(['/ui', '/ui/{*file}'], identified as RequestHandler, ui);
  // The orchestrator's probes: no token (a probe cannot carry one) and no per-caller limit, but
  // the same origin and Host checks as everything else. They answer harmless bodies either way;
  // the check stays so that every path has one rule, and a kubelet (which sends
  // `Host: <pod-ip>:<port>`) passes it with SERVER_HOST=0.0.0.0 and ALLOWED_HOSTS unset (any host)
  // or with a probe `Host` header that ALLOWED_HOSTS names (deploy/kubernetes/).
  const probes = probeRoutes({
    readiness: deps.readiness,
    authRequired: () => deps.authenticator.required,
    hasUpstreamKey: config.openaiApiKey !== undefined || config.anthropic.apiKey !== undefined,
  });
  app.get('/livez', identified as RequestHandler, probes.livez);
  app.get('/readyz', identified as RequestHandler, probes.readyz);
  app.use(front as RequestHandler);

  const limits = createRateLimiters({
    config,
    logger,
    storeFactory: deps.rateLimitStore,
    onLimited: (endpoint) => metrics.rateLimited.inc({ endpoint }),
  });

  // The OpenAI-compatible proxy: the two memory routes read their body; every other path
  // streams through untouched.
  const memoryRoute = (kind: 'chat' | 'responses'): Handler =>
    memoryChatRoute({
      kind,
      upstream,
      chatMemory: deps.chatMemory,
      maxBodyBytes: config.maxBodyBytes,
      placement: config.memory.injection.placement,
      maxBlockChars: config.memory.injection.maxChars,
    });
  const chat = memoryRoute('chat');
  const responses = memoryRoute('responses');
  const passthrough = passthroughRoute(upstream);
  // Anthropic's API: the same memory on /v1/messages, everything else through untouched.
  const messages = messagesRoute({
    upstream: deps.anthropicUpstream,
    chatMemory: deps.chatMemory,
    maxBodyBytes: config.maxBodyBytes,
    maxBlockChars: config.memory.injection.maxChars,
  });
  const anthropicPassthrough = passthroughRoute(deps.anthropicUpstream);
  const v1 = chain(front, limits.v1, (req, res, next) => {
    const path = req.method === 'POST' ? pathOf(req) : '';
    if (req.api === 'anthropic') return path === '/v1/messages' ? messages(req, res, next) : anthropicPassthrough(req, res, next);
    if (path === '/v1/chat/completions') return chat(req, res, next);
    if (path === '/v1/responses') return responses(req, res, next);
    return passthrough(req, res, next);
  });

  // Operations.
  app.get('/health', limits.health, healthRoute({ memory, metrics, version: config.version, saveQueueStats: deps.saveQueueStats }));
  app.get('/metrics', metricsRoute({ metrics, memory }));

  // The memory admin API: JSON bodies, parsed only here.
  const adminDefaults = { searchLimit: 10, listLimit: 100 };
  const admin = memoryRoutes(memory, adminDefaults);
  const json = [requireJson, express.json({ limit: ADMIN_BODY_LIMIT, strict: true })];
  app.post('/search', limits.search, ...json, admin.search);
  app.post('/list', limits.list, ...json, admin.list);
  app.post('/remember', limits.remember, ...json, admin.remember);
  app.post('/forget', limits.forget, ...json, admin.forget);

  // What the console is built on (admin API too): users, edits, the injection preview and trace.
  const consoleApi = consoleRoutes({
    memory,
    chatMemory: deps.chatMemory,
    traces: deps.traces,
    maxBlockChars: config.memory.injection.maxChars,
    logger,
    saveQueue: deps.saveQueueStats,
  });
  app.get('/whoami', limits.console, consoleApi.whoami);
  app.get('/stats', limits.console, consoleApi.stats);
  app.post('/users', limits.console, ...json, consoleApi.users);
  app.post('/update', limits.console, ...json, consoleApi.update);
  app.post('/preview', limits.console, ...json, consoleApi.preview);
  app.post('/traces', limits.console, ...json, consoleApi.traces);
  app.post('/export', limits.console, ...json, consoleApi.exportMemories);

  // The same memory for MCP clients (Streamable HTTP, stateless; the transport reads its own body).
  const mcp = mcpRoutes({ memory, logger, version: config.version, defaults: adminDefaults });
  app.post('/mcp', limits.mcp, mcp.post);
  app.get('/mcp', limits.mcp, mcp.methodNotAllowed);
  app.delete('/mcp', limits.mcp, mcp.methodNotAllowed);

  app.use((req, _res, next) => {
    next(new NotFoundError(`No route for ${req.method} ${req.path}`, 'No such endpoint'));
  });

  /** The one place errors become responses (the request's API's shape on /v1, the admin shape elsewhere). */
  const handleError = (err: unknown, req: IncomingMessage, res: ServerResponse): void => {
    const appError = toAppError(err);
    if (!(err instanceof AppError) && appError.status >= 500) {
      logger.error('unhandled error', { request_id: req.id, route: req.routeLabel, err });
    }
    // Refused before its body was read (401, 429, 413, 415, …): close the connection after the
    // answer rather than read on, so a client dribbling a huge body cannot hold the socket.
    if (!req.complete && !res.headersSent) res.setHeader('Connection', 'close');
    sendError(res, req.api ?? 'admin', appError);
  };
  const errorHandler: ErrorRequestHandler = (err: unknown, req, res, _next) => handleError(err, req, res);
  app.use(errorHandler);

  return (req, res) => {
    if (isProbe(req)) {
      res.writeHead(200, { 'content-length': '0', 'cache-control': 'no-store' });
      res.end();
    } else if (req.url !== undefined && isV1(req.url)) {
      req.api = apiOf(pathOf(req), req.headers);
      v1(req, res, (err?: unknown) => {
        // Refused before forwarding (401, 429, 400, 413): the overhead is the time to the refusal.
        setOverheadHeader(req, res, metrics);
        handleError(err ?? new NotFoundError('Not found'), req, res);
      });
    } else {
      app(req, res);
    }
  };
}

/** A connectivity probe (`HEAD /`, Claude Code's `HEAD /api/hello`): answered empty, without authentication. */
function isProbe(req: IncomingMessage): boolean {
  return req.method === 'HEAD' && (req.url === '/' || req.url === '/api/hello');
}
