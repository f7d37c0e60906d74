/**
 * A served proxy with the real memory engine (mem0 on the embedded store in a temp DATA_DIR),
 * talking to a fake upstream for chats, extraction and embeddings, with the `openai` client
 * pointed at it. Short engine deadlines and queue backoffs keep fault tests fast.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { loadConfig, type Config } from '../../src/config';
import type { Logger } from '../../src/logger';
import { createMemoryService } from '../../src/memory/factory';
import type { SaveQueueOptions } from '../../src/memory/save-queue';
import type { MemoryService } from '../../src/memory/types';
import { startEngine } from './engine';
import { buildTestApp, captureLogger, serve, type Served, type TestApp } from './app';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from './secrets';

export const GENEROUS_LIMITS: Readonly<Record<string, string>> = {
  RATE_LIMIT_V1: '100000',
  RATE_LIMIT_SEARCH: '100000',
  RATE_LIMIT_LIST: '100000',
  RATE_LIMIT_REMEMBER: '100000',
  RATE_LIMIT_HEALTH: '100000',
};

export interface MemoryProxy {
  app: TestApp;
  served: Served;
  client: OpenAI;
  close(): Promise<void>;
}

export interface MemoryProxyOptions {
  /** The fake upstream's base URL (ends in /v1). */
  upstreamUrl: string;
  /** Reuse a DATA_DIR (restarts); a fresh temp folder otherwise. */
  dataDir?: string;
  env?: Record<string, string>;
  /** Wraps the real memory service (a deliberately slow search or save). */
  wrap?: (memory: MemoryService) => MemoryService;
  /**
   * A running engine to use instead of starting one (`startSharedEngine`): several proxies of one
   * file share it, each with its own users; closing the proxy leaves it running.
   */
  engine?: SharedEngine;
  /** Another memory service instead of the real engine (the fake, for tests about the chat path around it). */
  memory?: (config: Config, logger: Logger) => MemoryService | Promise<MemoryService>;
  startQueue?: boolean;
  /** Start the engine thread from the .ts sources through tsx, as `npm run dev` does (default: this run's transpiled copy). */
  engineFromSource?: boolean;
  /** Save-queue options over the short test backoffs. */
  queueOptions?: Partial<Omit<SaveQueueOptions, 'path' | 'save'>>;
}

/** Short engine deadlines and backoffs, so fault tests are fast. */
const ENGINE_TUNING = { readTimeoutMs: 2000, writeTimeoutMs: 2000, baseDelayMs: 10, maxDelayMs: 50 };

export interface SharedEngine {
  memory: MemoryService;
  close(): Promise<void>;
}

/**
 * One real engine (its own temp DATA_DIR) for the proxies of a test file that do not need a fresh
 * one: starting an engine costs a second or more of CPU, and a file starts many proxies.
 */
export async function startSharedEngine(upstreamUrl: string): Promise<SharedEngine> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shared-engine-'));
  const config = loadConfig({
    env: { DEBUG: 'true', UPSTREAM_BASE_URL: upstreamUrl, OPENAI_API_KEY: TEST_OPENAI_KEY, DATA_DIR: dataDir, EMBEDDING_DIMS: '64' },
  });
  const memory = await startEngine(config, captureLogger(config).logger, { tuning: ENGINE_TUNING });
  return {
    memory,
    close: async () => {
      await memory.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The shared engine as one proxy sees it: every call goes to it, closing does not. */
function borrowed(memory: MemoryService): MemoryService {
  return Object.assign(Object.create(memory) as MemoryService, { close: async () => undefined });
}

export async function startMemoryProxy(options: MemoryProxyOptions): Promise<MemoryProxy> {
  const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'memory-proxy-'));
  const app = await buildTestApp(
    {
      UPSTREAM_BASE_URL: options.upstreamUrl,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      DATA_DIR: dataDir,
      EMBEDDING_DIMS: '64',
      ...GENEROUS_LIMITS,
      ...options.env,
    },
    {
      memory: async (config, logger) => {
        if (options.memory) return options.memory(config, logger);
        const real = options.engine
          ? borrowed(options.engine.memory)
          : options.engineFromSource
            ? await createMemoryService(config, logger, { tuning: ENGINE_TUNING })
            : await startEngine(config, logger, { tuning: ENGINE_TUNING });
        return options.wrap ? options.wrap(real) : real;
      },
      queueOptions: { baseDelayMs: 50, maxDelayMs: 200, stopTimeoutMs: 1000, ...options.queueOptions },
      ...(options.startQueue === undefined ? {} : { startQueue: options.startQueue }),
    },
  );
  const served = await serve(app.app);
  const client = new OpenAI({ apiKey: TEST_AUTH_TOKEN, baseURL: `${served.url}/v1`, maxRetries: 0, timeout: 10_000 });
  return {
    app,
    served,
    client,
    close: async () => {
      await served.close();
      await app.close();
      if (options.dataDir === undefined) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
