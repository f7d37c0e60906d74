/**
 * Builds the real app for tests through the same door as `index.ts`, with a logger whose every
 * line is captured (and scanned for secrets after each test file), and serves it on port 0.
 */
import fs from 'node:fs';
import type http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import winston from 'winston';
import { createHttpServer } from '../../src/http/server';
import { assemble } from '../../src/assemble';
import { loadConfig, type Config } from '../../src/config';
import { tokenAuthenticator, type Authenticator } from '../../src/http/authenticate';
import type { SharedFailureCounter } from '../../src/http/failed-logins';
import type { RateLimitStoreFactory } from '../../src/http/rate-limit';
import { createLogger, type Logger } from '../../src/logger';
import { createMetrics, type Metrics } from '../../src/metrics';
import type { MemoryService } from '../../src/memory/types';
import { UnavailableMemoryService } from '../../src/memory/unavailable';
import type { PostgresSaveQueueOptions } from '../../src/memory/pg-save-queue';
import type { ExchangeQueue } from '../../src/memory/save-queue';
import type { Upstream } from '../../src/proxy/upstream';

/** Every log line any test app wrote in this test file (scanned in log-scan.ts). */
export const capturedLogLines: string[] = [];

export function captureLogger(config: Config, lines: string[] = []): { logger: Logger; lines: string[] } {
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = chunk.toString('utf8');
      lines.push(line);
      capturedLogLines.push(line);
      cb();
    },
  });
  const logger = createLogger({ debug: config.debug, secrets: config.secrets, transports: [new winston.transports.Stream({ stream })] });
  return { logger, lines };
}

export interface TestApp {
  app: http.RequestListener;
  config: Config;
  logger: Logger;
  logs: string[];
  metrics: Metrics;
  memory: MemoryService;
  upstream: Upstream;
  queue: ExchangeQueue | undefined;
  close(): Promise<void>;
}

export interface TestAppOptions {
  memory?: (config: Config, logger: Logger) => MemoryService | Promise<MemoryService>;
  authenticator?: Authenticator;
  rateLimitStore?: RateLimitStoreFactory;
  failedLoginCounter?: SharedFailureCounter;
  /** Start the save queue's workers (default true). */
  startQueue?: boolean;
  /** Save-queue tuning (tests use short backoffs). */
  queueOptions?: Partial<Omit<PostgresSaveQueueOptions, 'connectionString' | 'save'>>;
}

/** `env` is the whole environment the config sees (plus DEBUG=true so debug lines are scanned too). */
export async function buildTestApp(env: Record<string, string>, options: TestAppOptions = {}): Promise<TestApp> {
  // Tests never write into the working tree: DATA_DIR defaults to a fresh temp folder.
  const dataDir = env.DATA_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'proxy-test-data-'));
  const config = loadConfig({ env: { DEBUG: 'true', DATA_DIR: dataDir, ...env } });
  const { logger, lines } = captureLogger(config);
  const metrics = createMetrics({ collectDefault: false });
  const memory = options.memory ? await options.memory(config, logger) : new UnavailableMemoryService(config.memory.backend, 'test');
  const authenticator = options.authenticator ?? tokenAuthenticator(config.authToken);
  const assembled = await assemble({
    config,
    logger,
    metrics,
    memory,
    authenticator,
    rateLimitStore: options.rateLimitStore,
    failedLoginCounter: options.failedLoginCounter,
    queueOptions: options.queueOptions,
    startQueue: options.startQueue,
  });
  const { app, upstream, queue } = assembled;
  return {
    app,
    config,
    logger,
    logs: lines,
    metrics,
    memory,
    upstream,
    queue,
    close: async () => {
      await assembled.close();
      if (env.DATA_DIR === undefined) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface Served {
  url: string;
  server: http.Server;
  close(): Promise<void>;
}

/** Serves a request listener on 127.0.0.1:0; `close` ends every connection. */
export async function serve(listener: http.RequestListener): Promise<Served> {
  // The server the process runs on (its request limits included).
  const server = createHttpServer(listener);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
