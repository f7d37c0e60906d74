/** Configuration: defaults, validation of every variable at once, and secrets that never show. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import util from 'node:util';
import dotenv from 'dotenv';
import { ConfigError, ENV_VARIABLES, loadConfig } from '../../src/config';
import { TEST_AUTH_TOKEN, TEST_DB_PASSWORD, TEST_MEM0_KEY, TEST_OPENAI_KEY } from '../helpers/secrets';

describe('loadConfig', () => {
  it('runs on defaults with an empty environment', () => {
    const config = loadConfig({ env: {} });
    expect(config.server).toEqual({ host: 'localhost', port: 8000, trustProxy: false });
    expect(config.upstream).toEqual({ baseUrl: 'https://api.openai.com/v1', timeoutMs: 600000 });
    expect(config.maxBodyBytes).toBe(20971520);
    expect(config.authToken).toBeUndefined();
    expect(config.memory.backend).toBe('embedded');
    expect(config.memory.model).toBe('gpt-4o-mini');
    expect(config.memory.embeddingDims).toBe(1536);
    expect(config.memory.telemetry).toBe(false);
    expect(config.rateLimits.perMinute).toEqual({
      health: 10,
      search: 30,
      list: 20,
      remember: 20,
      forget: 10,
      v1: 60,
      mcp: 60,
      console: 120,
    });
    expect(config.console.traceRequests).toBe(1000);
    expect(config.dataDir).toBe(path.resolve('./data'));
  });

  it('takes overrides from the environment, treating empty values as unset', () => {
    const config = loadConfig({
      env: {
        SERVER_PORT: '9001',
        RATE_LIMIT_SEARCH: '500',
        DEBUG: 'true',
        UPSTREAM_BASE_URL: 'http://127.0.0.1:1234/v1/',
        MEMORY_TOP_K: '',
        MEM0_LLM_BASE_URL: 'http://llm:1/v1',
      },
    });
    expect(config.server.port).toBe(9001);
    expect(config.rateLimits.perMinute.search).toBe(500);
    expect(config.debug).toBe(true);
    expect(config.upstream.baseUrl).toBe('http://127.0.0.1:1234/v1');
    expect(config.memory.topK).toBe(5);
    expect(config.memory.llmBaseUrl).toBe('http://llm:1/v1');
    expect(config.memory.embedderBaseUrl).toBe('http://127.0.0.1:1234/v1');
  });

  it('reports every bad variable in one error, without echoing values', () => {
    let error: unknown;
    try {
      loadConfig({
        env: {
          SERVER_PORT: 'eighty',
          UPSTREAM_BASE_URL: 'ftp://x',
          DEBUG: 'maybe',
          MEMORY_BACKEND: 'mongo',
          AUTH_TOKEN: 'short',
          RATE_LIMIT_V1: '0',
        },
      });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as ConfigError).message;
    for (const name of ['SERVER_PORT', 'UPSTREAM_BASE_URL', 'DEBUG', 'MEMORY_BACKEND', 'AUTH_TOKEN', 'RATE_LIMIT_V1'])
      expect(message).toContain(name);
    expect((error as ConfigError).problems).toHaveLength(6);
    expect(message).not.toContain('eighty');
    expect(message).not.toContain('short');
  });

  it('refuses an upstream base URL with a query string, which would be lost', () => {
    expect(() => loadConfig({ env: { UPSTREAM_BASE_URL: 'https://x.example/openai/v1?api-version=1' } })).toThrow(
      /UPSTREAM_BASE_URL: must not have a query string/,
    );
  });

  it('refuses AUTH_TOKEN without OPENAI_API_KEY', () => {
    expect(() => loadConfig({ env: { AUTH_TOKEN: TEST_AUTH_TOKEN } })).toThrow(/OPENAI_API_KEY/);
  });

  it('masks every secret in toString, toJSON, util.inspect and safeDump', () => {
    const config = loadConfig({
      env: {
        AUTH_TOKEN: TEST_AUTH_TOKEN,
        OPENAI_API_KEY: TEST_OPENAI_KEY,
        MEM0_API_KEY: TEST_MEM0_KEY,
        REDIS_URL: `redis://user:${TEST_DB_PASSWORD}@127.0.0.1:6379/0`,
        DATABASE_URL: `postgres://app:${TEST_DB_PASSWORD}@127.0.0.1:5432/db`,
      },
    });
    const views = [
      String(config),
      JSON.stringify(config),
      util.inspect(config, { depth: 10 }),
      JSON.stringify(config.safeDump()),
      `${config}`,
    ];
    for (const view of views) {
      for (const secret of [TEST_AUTH_TOKEN, TEST_OPENAI_KEY, TEST_MEM0_KEY, TEST_DB_PASSWORD]) expect(view).not.toContain(secret);
      expect(view).toContain('***');
    }
    // The real values stay usable by the code that needs them.
    expect(config.authToken).toBe(TEST_AUTH_TOKEN);
    expect(config.secrets).toEqual(expect.arrayContaining([TEST_AUTH_TOKEN, TEST_OPENAI_KEY, TEST_MEM0_KEY, TEST_DB_PASSWORD]));
    expect(Object.keys(config)).not.toContain('secrets');
  });

  it('is deeply frozen', () => {
    const config = loadConfig({ env: {} });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.rateLimits.perMinute)).toBe(true);
    expect(() => {
      (config.server as { port: number }).port = 1;
    }).toThrow(TypeError);
  });

  it('loads .env under the real environment, which wins', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfg-'));
    const file = path.join(dir, '.env');
    fs.writeFileSync(file, 'SERVER_PORT=7001\nMODEL_NAME=from-dotenv\n');
    const saved = process.env.MODEL_NAME;
    process.env.MODEL_NAME = 'from-env';
    try {
      const config = loadConfig({ dotenvPath: file });
      expect(config.server.port).toBe(7001);
      expect(config.memory.model).toBe('from-env');
    } finally {
      if (saved === undefined) delete process.env.MODEL_NAME;
      else process.env.MODEL_NAME = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('config/env.example', () => {
  const file = path.join(__dirname, '..', '..', 'config', 'env.example');
  const parsed = dotenv.parse(fs.readFileSync(file));

  it('lists every variable the proxy reads, each with a comment, and nothing else', () => {
    expect(Object.keys(parsed).sort()).toEqual([...ENV_VARIABLES].sort());
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    for (const name of ENV_VARIABLES) {
      const i = lines.findIndex((l) => l.startsWith(`${name}=`));
      // A comment right above, or above the group the line belongs to.
      const above = lines.slice(Math.max(0, i - 6), i).some((l) => l.startsWith('#'));
      expect({ name, commented: above }).toEqual({ name, commented: true });
    }
  });

  it('is a valid configuration as it stands', () => {
    expect(() => loadConfig({ env: parsed })).not.toThrow();
  });
});

it("lists every variable in the README's configuration table", () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', '..', 'README.md'), 'utf8');
  const table = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1));
  expect(ENV_VARIABLES.filter((name) => !table.includes(`\`${name}\``))).toEqual([]);
});
