/**
 * The proxy the console's tests run against: the console built as `npm run build` builds it, the
 * in-memory fake memory service (the console's tests are about the console and its admin API, not
 * the engine; the engine has its own suites), the fake upstream for chats, AUTH_TOKEN plus a key
 * registry with one key bound to the user `alice`, and limits generous enough for a test.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { keyDigestHex } from '../../src/keys/registry';
import { fakeMemory } from '../fakes/memory-service';
import type { TestApp } from './app';
import { buildKeyedTestApp, newTestKey } from './keyed-app';
import { GENEROUS_LIMITS } from './memory-proxy';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from './secrets';

const ROOT = path.resolve(__dirname, '..', '..');

export interface ConsoleApp {
  app: TestApp;
  /** A registry key bound to the user `alice`. */
  aliceKey: string;
  close(): Promise<void>;
}

/** Builds the console (scripts/build-ui.mjs) and the app; `env` is added to the proxy's environment. */
export async function startConsoleApp(upstreamUrl: string, env: Record<string, string> = {}): Promise<ConsoleApp> {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'build-ui.mjs')], { stdio: 'pipe' });
  const aliceKey = newTestKey();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'console-app-'));
  const fullEnv = {
    UPSTREAM_BASE_URL: upstreamUrl,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    DATA_DIR: path.join(tmp, 'data'),
    EMBEDDING_DIMS: '64',
    ...GENEROUS_LIMITS,
    RATE_LIMIT_FORGET: '100000',
    RATE_LIMIT_CONSOLE: '100000',
    ...env,
  };
  const { app } = await buildKeyedTestApp(fullEnv, {
    dir: tmp,
    keys: [{ id: 'app-alice', sha256: keyDigestHex(aliceKey), user_id: 'alice' }],
    token: TEST_AUTH_TOKEN,
    memory: fakeMemory(),
    queueOptions: { baseDelayMs: 50, maxDelayMs: 200 },
  });
  return {
    app,
    aliceKey,
    close: async () => {
      await app.close();
      fs.rmSync(tmp, { recursive: true, force: true });
    },
  };
}
