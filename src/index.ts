/**
 * The process: load and validate configuration, build the dependencies, create the app, listen,
 * reload the key registry on SIGHUP, and shut down cleanly on SIGTERM/SIGINT.
 */
import type http from 'node:http';
import { assemble } from './assemble';
import { createHttpServer } from './http/server';
import { ConfigError, loadConfig, type Config } from './config';
import { combinedAuthenticator } from './keys/authenticator';
import { createRedisRateLimitStore } from './http/redis-store';
import { KeyRegistry, KeyRegistryError } from './keys/registry';
import { createLogger, type Logger } from './logger';
import { createMemoryService } from './memory/factory';
import { createMetrics } from './metrics';
import { Readiness } from './routes/probes';

/** How long in-flight requests and streams may take to finish after SIGTERM. */
const SHUTDOWN_GRACE_MS = 10_000;

export interface RunningServer {
  server: http.Server;
  config: Config;
  logger: Logger;
  /** Re-reads `KEYS_FILE` (SIGHUP); a bad file keeps the keys in effect. */
  reloadKeys(): void;
  /** Reports not ready (`/readyz`), stops accepting, waits for in-flight requests (bounded), closes stores. */
  close(): Promise<void>;
}

export async function start(config: Config, logger: Logger): Promise<RunningServer> {
  const metrics = createMetrics();
  // A bad registry file throws here: the process refuses to start (main prints the problems).
  const registry = KeyRegistry.open({ file: config.keysFile, logger });
  const authenticator = combinedAuthenticator(config.authToken, registry);
  if (!authenticator.required) {
    logger.warn('AUTH_TOKEN is not set and there is no key registry: development mode, every caller is accepted without authentication');
  } else if (config.openaiApiKey === undefined) {
    // Authentication is required, so the caller's credential is never forwarded (see below).
    logger.warn('OPENAI_API_KEY is not set: requests reach the upstream without credentials');
  }
  const memory = await createMemoryService(config, logger, { metrics });
  // With REDIS_URL the rate-limit counters are shared by every instance. Redis being down at start
  // does not stop the proxy: limits fail open (or closed, RATE_LIMIT_FAIL_CLOSED) until it is back.
  const redis = config.redisUrl
    ? createRedisRateLimitStore({
        url: config.redisUrl,
        prefix: config.rateLimits.redisPrefix,
        logger,
        onStoreError: (endpoint) => metrics.rateLimitStoreErrors.inc({ endpoint }),
      })
    : undefined;
  if (redis && !(await redis.ready(3000))) {
    logger.warn(
      config.rateLimits.failClosed
        ? 'Redis is not reachable yet: rate-limited endpoints answer 503 until it is'
        : 'Redis is not reachable yet: requests are served without rate limits until it is',
    );
  }
  // /readyz reports not ready from the first moment of shutdown.
  const readiness = new Readiness();
  const { app, close: closeParts } = assemble({
    config,
    logger,
    metrics,
    memory,
    authenticator,
    rateLimitStore: redis?.storeFactory,
    failedLoginCounter: redis?.failureCounter,
    readiness,
  });
  const server = createHttpServer(app);

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.server.port, config.server.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.server.port;
  logger.info('listening', { host: config.server.host, port, upstream: config.upstream.baseUrl, memory_backend: memory.backend });
  logger.debug('configuration', { config: config.safeDump() });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Not ready before anything else: requests on connections still open (a load balancer's
      // health checks among them) see 503 while in-flight requests drain.
      readiness.beginShutdown();
      logger.info('shutting down');
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // A keep-alive connection whose in-flight response finishes after this point goes idle and
      // would hold server.close() until the grace period ends: close such connections as they go idle.
      const sweep = setInterval(() => server.closeIdleConnections(), 100);
      sweep.unref();
      const grace = new Promise<void>((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS).unref());
      await Promise.race([done, grace]);
      clearInterval(sweep);
      server.closeAllConnections();
      await closeParts();
      await redis?.close();
      logger.info('stopped');
    })();
    return closing;
  };
  const reloadKeys = (): void => {
    registry.reload();
  };
  return { server, config, logger, reloadKeys, close };
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const logger = createLogger({ debug: config.debug, secrets: config.secrets });
  let running: RunningServer;
  try {
    running = await start(config, logger);
  } catch (err) {
    if (err instanceof KeyRegistryError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const stop = (signal: string): void => {
    logger.info('signal received', { signal });
    running.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error('shutdown failed', { err });
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    logger.info('signal received', { signal: 'SIGHUP' });
    running.reloadKeys();
  });
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`fatal: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
