/**
 * The process: load and validate configuration, build the dependencies, create the app, listen,
 * and shut down cleanly on SIGTERM/SIGINT.
 */
import http from 'node:http';
import { createApp } from './app';
import { ConfigError, loadConfig, type Config } from './config';
import { tokenAuthenticator } from './http/authenticate';
import { createLogger, type Logger } from './logger';
import { createChatMemory } from './memory/chat-memory';
import { createMemoryService } from './memory/factory';
import { closeAllEmbeddedVectorStores } from './memory/vector-store/embedded-store';
import { createMetrics } from './metrics';
import { Upstream } from './proxy/upstream';

/** How long in-flight requests and streams may take to finish after SIGTERM. */
const SHUTDOWN_GRACE_MS = 10_000;

export interface RunningServer {
  server: http.Server;
  config: Config;
  logger: Logger;
  /** Stops accepting, waits for in-flight requests (bounded), closes stores. */
  close(): Promise<void>;
}

export async function start(config: Config, logger: Logger): Promise<RunningServer> {
  const metrics = createMetrics();
  const authenticator = tokenAuthenticator(config.authToken);
  if (!authenticator.required) {
    logger.warn('AUTH_TOKEN is not set: development mode, every caller is accepted without authentication');
  }
  const memory = await createMemoryService(config, logger, { metrics });
  const upstream = new Upstream({
    baseUrl: config.upstream.baseUrl,
    timeoutMs: config.upstream.timeoutMs,
    maxBodyBytes: config.maxBodyBytes,
    apiKey: config.openaiApiKey,
    forwardCallerAuthorization: !authenticator.required,
    logger,
    metrics,
  });
  const { chatMemory, queue } = createChatMemory({
    memory,
    dataDir: config.dataDir,
    metrics,
    logger,
    topK: config.memory.topK,
    threshold: config.memory.scoreThreshold,
    timeoutMs: config.memory.searchTimeoutMs,
  });
  // Drains what an earlier run left in the queue, then keeps saving in the background.
  queue?.start();
  const saveQueueStats = queue ? () => ({ depth: queue.depth(), failures: queue.failures }) : undefined;
  const app = createApp({ config, logger, metrics, memory, authenticator, upstream, chatMemory, saveQueueStats });
  const server = http.createServer(app);
  // Slow or stalled clients must not hold sockets forever; long model answers are fine because
  // these only bound the request side.
  server.headersTimeout = 60_000;
  server.requestTimeout = 0;
  server.keepAliveTimeout = 65_000;

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
      logger.info('shutting down');
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const grace = new Promise<void>((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS).unref());
      await Promise.race([done, grace]);
      server.closeAllConnections();
      upstream.close();
      // In-flight saves get a bounded wait; the rest stays durable for the next start.
      await queue?.stop();
      await memory.close();
      // Last sweep: any embedded store file still open in this process is closed before exit.
      closeAllEmbeddedVectorStores();
      logger.info('stopped');
    })();
    return closing;
  };
  return { server, config, logger, close };
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
  // The memory engine reads this when it is first imported: off unless the operator turned it on.
  process.env.MEM0_TELEMETRY = config.memory.telemetry ? 'true' : 'false';
  const logger = createLogger({ debug: config.debug, secrets: config.secrets });
  const running = await start(config, logger);
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
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`fatal: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
