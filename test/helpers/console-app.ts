/**
 * The proxy the console's tests run against: the console built as `npm run build` builds it, the
 * real memory engine (embedded store in a temp DATA_DIR) on the fake upstream, AUTH_TOKEN plus a
 * key registry with one key bound to the user `alice`, and limits generous enough for a test.
 */
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config';
import { combinedAuthenticator } from '../../src/keys/authenticator';
import { writeKeysFile } from '../../src/keys/file';
import { KeyRegistry, keyDigestHex } from '../../src/keys/registry';
import { createMemoryService } from '../../src/memory/factory';
import { buildTestApp, captureLogger, type TestApp } from './app';
import { GENEROUS_LIMITS } from './memory-proxy';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY, runtimeSecrets } from './secrets';

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
  const aliceKey = `mp_${crypto.randomBytes(32).toString('base64url')}`;
  runtimeSecrets.push(aliceKey);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'console-app-'));
  const keysFile = path.join(tmp, 'keys.json');
  writeKeysFile(keysFile, { keys: [{ id: 'app-alice', sha256: keyDigestHex(aliceKey), user_id: 'alice' }] });
  const fullEnv = {
    UPSTREAM_BASE_URL: upstreamUrl,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    DATA_DIR: path.join(tmp, 'data'),
    EMBEDDING_DIMS: '64',
    KEYS_FILE: keysFile,
    ...GENEROUS_LIMITS,
    RATE_LIMIT_FORGET: '100000',
    RATE_LIMIT_CONSOLE: '100000',
    ...env,
  };
  const { logger } = captureLogger(loadConfig({ env: { DEBUG: 'true', ...fullEnv } }));
  const registry = KeyRegistry.load({ file: keysFile, logger });
  if (!registry) throw new Error('registry missing');
  const app = await buildTestApp(fullEnv, {
    authenticator: combinedAuthenticator(TEST_AUTH_TOKEN, registry),
    memory: (config, l) => createMemoryService(config, l, { tuning: { readTimeoutMs: 3000, writeTimeoutMs: 3000 } }),
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
