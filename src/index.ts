/**
 * The process: load and validate configuration, assemble the proxy (`assemble.ts`), listen, reload
 * the key registry on SIGHUP, and shut down cleanly on SIGTERM/SIGINT.
 */
import type http from 'node:http';
import { assemble } from './assemble';
import { createHttpServer } from './http/server';
import { ConfigError, loadConfig, type Config } from './config';
import { KeyRegistryError } from './keys/registry';
import { createLogger, type Logger } from './logger';

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
  const assembled = await assemble({ config, logger });
  const server = createHttpServer(assembled.app);

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.server.port, config.server.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.server.port;
  logger.info('listening', { host: config.server.host, port, upstream: config.upstream.baseUrl, memory_backend: assembled.memory.backend });
  logger.debug('configuration', { config: config.safeDump() });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Not ready before anything else: requests on connections still open (a load balancer's
      // health checks among them) see 503 while in-flight requests drain.
      assembled.readiness.beginShutdown();
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
      await assembled.close();
      logger.info('stopped');
    })();
    return closing;
  };
  return { server, config, logger, reloadKeys: assembled.reloadKeys, close };
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
