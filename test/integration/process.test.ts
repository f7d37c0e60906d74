/**
 * The process as users run it: starts with no .env and no other service, refuses a bad
 * configuration with one message naming every bad variable, logs no secret, stops on SIGTERM.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startFakeUpstream } from '../fakes/openai-upstream';
import { listeningPort, startProxyProcess } from '../helpers/process';
import { ALL_TEST_SECRETS, runtimeSecrets, TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'proc-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

it('starts with no .env, serves /health, and exits 0 on SIGTERM', async () => {
  const proc = startProxyProcess({ SERVER_HOST: '127.0.0.1', SERVER_PORT: '0', DATA_DIR: path.join(dir, 'data') }, dir);
  try {
    const port = await listeningPort(proc);
    const res = await fetch(`http://127.0.0.1:${port}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      status: expect.stringMatching(/healthy|degraded/),
      memory_service_available: expect.any(Boolean),
    });
    expect(proc.out.join('')).toContain('development mode');
  } finally {
    proc.child.kill('SIGTERM');
  }
  expect(await proc.exited).toBe('0');
});

it('refuses a bad configuration with one message naming every bad variable', async () => {
  const proc = startProxyProcess(
    { SERVER_PORT: 'http', UPSTREAM_TIMEOUT_MS: '-5', MEMORY_BACKEND: 'nosuch', AUTH_TOKEN: TEST_AUTH_TOKEN },
    dir,
  );
  expect(await proc.exited).toBe('1');
  const stderr = proc.err.join('');
  for (const name of ['SERVER_PORT', 'UPSTREAM_TIMEOUT_MS', 'MEMORY_BACKEND']) expect(stderr).toContain(name);
  expect(stderr).not.toContain(TEST_AUTH_TOKEN);
});

it('never writes a secret to its output, even at debug level', async () => {
  const proc = startProxyProcess(
    {
      SERVER_HOST: '127.0.0.1',
      SERVER_PORT: '0',
      DATA_DIR: path.join(dir, 'data'),
      DEBUG: 'true',
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      UPSTREAM_BASE_URL: 'http://127.0.0.1:9/v1',
    },
    dir,
  );
  try {
    const port = await listeningPort(proc);
    await fetch(`http://127.0.0.1:${port}/health`, { headers: { authorization: 'Bearer wrong-token-123' } });
    await fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { authorization: `Bearer ${TEST_AUTH_TOKEN}` } });
  } finally {
    proc.child.kill('SIGTERM');
  }
  await proc.exited;
  const output = proc.out.join('') + proc.err.join('');
  expect(output).toContain('Invalid authorization token provided');
  for (const secret of ALL_TEST_SECRETS) expect(output).not.toContain(secret);
});

describe('the key registry in the running process', () => {
  const writeKeys = (file: string, entries: Array<Record<string, unknown>>): void =>
    fs.writeFileSync(file, JSON.stringify({ keys: entries }));
  const digest = (key: string): string => createHash('sha256').update(key).digest('hex');

  it('refuses to start with a bad KEYS_FILE, naming the problem', async () => {
    const file = path.join(dir, 'keys.json');
    writeKeys(file, [{ id: 'app-1', sha256: 'not-hex' }]);
    const proc = startProxyProcess({ SERVER_HOST: '127.0.0.1', SERVER_PORT: '0', DATA_DIR: path.join(dir, 'data'), KEYS_FILE: file }, dir);
    expect(await proc.exited).toBe('1');
    expect(proc.err.join('')).toMatch(/sha256/);
  });

  it('revokes a removed key on SIGHUP, and keeps the keys when the new file is bad', async () => {
    const file = path.join(dir, 'keys.json');
    const alice = 'mp_test-key-alice-0123456789abcdef';
    const bob = 'mp_test-key-bob-0123456789abcdef0';
    runtimeSecrets.push(alice, bob);
    writeKeys(file, [
      { id: 'alice', sha256: digest(alice), user_id: 'alice' },
      { id: 'bob', sha256: digest(bob), user_id: 'bob' },
    ]);
    const proc = startProxyProcess(
      { SERVER_HOST: '127.0.0.1', SERVER_PORT: '0', DATA_DIR: path.join(dir, 'data'), KEYS_FILE: file, OPENAI_API_KEY: TEST_OPENAI_KEY },
      dir,
    );
    try {
      const port = await listeningPort(proc);
      const health = (key: string): Promise<number> =>
        fetch(`http://127.0.0.1:${port}/health`, { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status);
      expect(await health(alice)).toBe(200);
      expect(await health(bob)).toBe(200);
      expect(await health('mp_unknown-key-000000000000000')).toBe(401);

      writeKeys(file, [{ id: 'alice', sha256: digest(alice), user_id: 'alice' }]);
      proc.child.kill('SIGHUP');
      await waitUntil(async () => (await health(bob)) === 401);
      expect(await health(alice)).toBe(200);

      fs.writeFileSync(file, '{ not json');
      proc.child.kill('SIGHUP');
      await new Promise((r) => setTimeout(r, 300));
      expect(await health(alice)).toBe(200);
    } finally {
      proc.child.kill('SIGTERM');
    }
    expect(await proc.exited).toBe('0');
    const output = proc.out.join('') + proc.err.join('');
    expect(output).not.toContain(alice);
    expect(output).not.toContain(bob);
  });
});

describe('a key registry that appears after start', () => {
  const digest = (key: string): string => createHash('sha256').update(key).digest('hex');

  it('is loaded on SIGHUP: from then on every caller needs a key and no caller credential is forwarded', async () => {
    const fake = await startFakeUpstream();
    const file = path.join(dir, 'keys.json');
    const key = 'mp_test-key-late-0123456789abcdef';
    const callerKey = 'sk-caller-own-key-0123456789abcdef';
    runtimeSecrets.push(key, callerKey);
    // Development mode: no AUTH_TOKEN, no registry file, no key of the proxy's own.
    const proc = startProxyProcess(
      { SERVER_HOST: '127.0.0.1', SERVER_PORT: '0', DATA_DIR: path.join(dir, 'data'), KEYS_FILE: file, UPSTREAM_BASE_URL: fake.url },
      dir,
    );
    try {
      const port = await listeningPort(proc);
      const models = (auth: string | undefined): Promise<number> =>
        fetch(`http://127.0.0.1:${port}/v1/models`, { headers: auth === undefined ? {} : { authorization: `Bearer ${auth}` } }).then(
          (r) => r.status,
        );
      const forwarded = (): unknown => fake.requestsTo('/v1/models').at(-1)?.headers.authorization;
      expect(await models(callerKey)).toBe(200);
      expect(forwarded()).toBe(`Bearer ${callerKey}`);

      fs.writeFileSync(file, JSON.stringify({ keys: [{ id: 'late', sha256: digest(key) }] }));
      proc.child.kill('SIGHUP');
      await waitUntil(async () => (await models(undefined)) === 401);
      expect(await models(callerKey)).toBe(401);
      fake.reset();
      expect(await models(key)).toBe(200);
      expect(fake.requestsTo('/v1/models')).toHaveLength(1);
      expect(forwarded()).toBeUndefined();

      // Deleting the file revokes the keys; it does not reopen development mode.
      fs.rmSync(file);
      proc.child.kill('SIGHUP');
      await waitUntil(async () => (await models(key)) === 401);
      expect(await models(undefined)).toBe(401);
    } finally {
      proc.child.kill('SIGTERM');
      await fake.close();
    }
    expect(await proc.exited).toBe('0');
    expect(proc.out.join('')).toContain('every caller needs a key');
  });
});

async function waitUntil(condition: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
