/**
 * A test app whose callers are a key registry (KEYS_FILE), as the process builds it: the keys file
 * written to a folder, the registry loaded from it with a captured logger, and the app built with
 * the combined authenticator (the registry, plus AUTH_TOKEN when given). Registry keys are random
 * per run and joined to the suite-wide secret scan.
 */
import crypto from 'node:crypto';
import path from 'node:path';
import { loadConfig } from '../../src/config';
import { combinedAuthenticator } from '../../src/keys/authenticator';
import { writeKeysFile } from '../../src/keys/file';
import { KeyRegistry, type KeyEntryJson } from '../../src/keys/registry';
import { buildTestApp, captureLogger, type TestApp, type TestAppOptions } from './app';
import { runtimeSecrets } from './secrets';

/** A fresh registry key (`mp_` and 32 random bytes), which the log scan then looks for. */
export function newTestKey(): string {
  const key = `mp_${crypto.randomBytes(32).toString('base64url')}`;
  runtimeSecrets.push(key);
  return key;
}

export interface TestRegistry {
  keysFile: string;
  registry: KeyRegistry;
}

/** Writes `keys` to `<dir>/keys.json` and loads the registry from it; `env` is what the config sees. */
export function loadTestRegistry(dir: string, keys: KeyEntryJson[], env: Record<string, string> = {}): TestRegistry {
  const keysFile = path.join(dir, 'keys.json');
  writeKeysFile(keysFile, { keys });
  const { logger } = captureLogger(loadConfig({ env: { DEBUG: 'true', DATA_DIR: dir, ...env, KEYS_FILE: keysFile } }));
  const registry = KeyRegistry.load({ file: keysFile, logger });
  if (!registry) throw new Error(`no key registry loaded from ${keysFile}`);
  return { keysFile, registry };
}

export interface KeyedAppOptions extends Omit<TestAppOptions, 'authenticator'> {
  /** Where keys.json goes. */
  dir: string;
  keys: KeyEntryJson[];
  /** AUTH_TOKEN beside the registry; without it the registry alone makes authentication required. */
  token?: string | undefined;
}

export interface KeyedApp extends TestRegistry {
  app: TestApp;
}

/** buildTestApp with KEYS_FILE set to the written keys and the registry as its authenticator. */
export async function buildKeyedTestApp(env: Record<string, string>, options: KeyedAppOptions): Promise<KeyedApp> {
  const { dir, keys, token, ...appOptions } = options;
  const { keysFile, registry } = loadTestRegistry(dir, keys, env);
  const app = await buildTestApp({ ...env, KEYS_FILE: keysFile }, { ...appOptions, authenticator: combinedAuthenticator(token, registry) });
  return { app, keysFile, registry };
}
