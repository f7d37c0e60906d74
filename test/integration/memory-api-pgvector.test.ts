/**
 * The memory admin API end to end with MEMORY_BACKEND=pgvector: HTTP -> admin routes ->
 * Mem0MemoryService -> mem0ai's real `Memory` -> mem0's pgvector store -> `pg` over TCP -> PGlite
 * with pgvector behind pglite-socket (test/helpers/pglite-server.ts), with the fake OpenAI upstream
 * answering mem0's extraction call and embeddings. The scenarios every backend shares are in
 * test/helpers/memory-api-suite.ts (with the places where pgvector differs from the embedded
 * store); here, what only a shared store gives: a closed instance releases its connections, and a
 * second instance running at the same time sees the same memories.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type { MemoryItem } from '../../src/memory/types';
import { capturedLogLines } from '../helpers/app';
import {
  describeMemoryApi,
  health,
  list,
  memoryApiFixture,
  MEMORY_API_LIMITS,
  post,
  remember,
  search,
  texts,
  type MemoryApiInstance,
} from '../helpers/memory-api-suite';
import { startPgliteServer, type PgliteServer } from '../helpers/pglite-server';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';
import { BUILT_ENTRY } from '../helpers/built';

let pg: PgliteServer;

// PGlite's WebAssembly start-up and initdb take several seconds: once for the whole file.
beforeAll(async () => {
  pg = await startPgliteServer();
}, 60_000);
afterAll(async () => {
  await pg.close();
});

const fixture = memoryApiFixture('memory-api-pgvector-test-');

/**
 * One proxy instance, run as users run it (`src/index.ts` in its own process): mem0 loads `pg`
 * with a dynamic `import()`, which Jest's CommonJS sandbox refuses, so the pgvector backend cannot
 * run inside the test process. Its log lines join the suite-wide secret scan.
 */
interface Instance extends MemoryApiInstance {
  /** What supertest is given: the instance's base URL. */
  app: string;
  /** SIGTERM, then the exit code. Idempotent. */
  close(): Promise<number | null>;
}

/** Each instance has its own DATA_DIR (history, mem0's files, save queue); the memories are in the database. */
async function startApp(dataDir: string = fixture.freshDataDir()): Promise<Instance> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: dataDir,
    MEM0_TELEMETRY: 'false',
    DEBUG: 'true',
    SERVER_HOST: '127.0.0.1',
    SERVER_PORT: '0',
    UPSTREAM_BASE_URL: fixture.fake.url,
    DATA_DIR: dataDir,
    EMBEDDING_DIMS: '64',
    MEMORY_BACKEND: 'pgvector',
    DATABASE_URL: pg.url,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    ...MEMORY_API_LIMITS,
  };
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, [BUILT_ENTRY], {
    cwd: dataDir,
    env,
  });
  const out: string[] = [];
  const err: string[] = [];
  let partial = '';
  child.stdout.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      out.push(line);
      capturedLogLines.push(line);
    }
  });
  child.stderr.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    err.push(text);
    capturedLogLines.push(text);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let closing: Promise<number | null> | undefined;
  const close = (): Promise<number | null> => {
    closing ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    })();
    return closing;
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    // Readable lines with DEBUG=true: the port is `"port":N`.
    const line = out.find((l) => l.includes('listening'));
    const port = line ? /"port":(\d+)/.exec(line)?.[1] : undefined;
    if (port) return { app: `http://127.0.0.1:${port}`, dataDir, logs: () => out, close };
    if (child.exitCode !== null) throw new Error(`proxy exited early: ${err.join('')}`);
    if (Date.now() > deadline) {
      await close();
      throw new Error(`proxy not listening in time: ${err.join('')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

type TestApp = Instance;

/** The part of `pg` used here to look inside the database (no @types/pg installed). */
interface PgClient {
  connect(): Promise<void>;
  query(text: string): Promise<{ rows: Array<Record<string, unknown>> }>;
  end(): Promise<void>;
}
const { Client } = require('pg') as { Client: new (config: { connectionString: string }) => PgClient };

/** Runs one query on its own connection. */
async function sql(text: string): Promise<Array<Record<string, unknown>>> {
  const client = new Client({ connectionString: pg.url });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

const ids = (items: MemoryItem[]): string[] => items.map((m) => m.id).sort();

describeMemoryApi(fixture, { kind: 'pgvector', start: startApp, startTimeoutMs: 40_000, sql });

describe('database connections', () => {
  it('releases its database connections on close', async () => {
    const before = await pg.activeConnections();
    const app = await startApp();
    await remember(app, { user_id: 'frank', content: 'I own a kayak' });
    expect(await pg.activeConnections()).toBeGreaterThan(before);
    expect(await app.close()).toBe(0);
    const deadline = Date.now() + 2_000;
    while ((await pg.activeConnections()) > before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await pg.activeConnections()).toBe(before);
  }, 40_000);
});

describe('two instances at once on the same database', () => {
  let a: TestApp;
  let b: TestApp;

  beforeAll(async () => {
    [a, b] = await Promise.all([startApp(), startApp()]);
  }, 60_000);
  afterAll(async () => {
    expect(await Promise.all([a.close(), b.close()])).toEqual([0, 0]);
  });
  beforeEach(() => fixture.fake.reset());

  it('B lists and searches what A remembered; after B forgets it, A no longer sees it', async () => {
    const added = await remember(a, { user_id: 'grace', content: 'My sister lives in Oslo. I drink green tea.' });
    expect(added.count).toBe(2);

    expect(ids((await list(b, { user_id: 'grace' })).memories)).toEqual(ids(added.memories));
    const found = await search(b, { user_id: 'grace', query: 'where does my sister live?' });
    expect(found.memories[0]?.memory).toBe('My sister lives in Oslo');

    const oslo = found.memories[0]!;
    await post(b, '/forget', { user_id: 'grace', memory_id: oslo.id }).expect(200);
    expect(texts((await list(a, { user_id: 'grace' })).memories)).toEqual(['I drink green tea']);
    expect((await search(a, { user_id: 'grace', query: 'where does my sister live?' })).memories.map((m) => m.id)).not.toContain(oslo.id);
    await post(a, '/forget', { user_id: 'grace', memory_id: oslo.id }).expect(404);

    await post(a, '/forget', { user_id: 'grace' }).expect(200);
    expect((await list(b, { user_id: 'grace' })).count).toBe(0);
  });

  it('takes writes from both instances at the same time without losing or mixing any', async () => {
    const notes = (who: string): string[] => Array.from({ length: 6 }, (_, i) => `${who} note ${i}`);
    const [fromA, fromB] = await Promise.all([
      Promise.all(notes('Alpha').map((content) => remember(a, { user_id: 'heidi', content, infer: false }))),
      Promise.all(notes('Bravo').map((content) => remember(b, { user_id: 'ivan', content, infer: false }))),
    ]);
    expect(fromA.flatMap((r) => texts(r.memories)).sort()).toEqual(notes('Alpha').sort());
    expect(fromB.flatMap((r) => texts(r.memories)).sort()).toEqual(notes('Bravo').sort());

    for (const app of [a, b]) {
      expect(texts((await list(app, { user_id: 'heidi' })).memories).sort()).toEqual(notes('Alpha').sort());
      expect(texts((await list(app, { user_id: 'ivan' })).memories).sort()).toEqual(notes('Bravo').sort());
    }
  });

  it('both report a healthy memory service', async () => {
    for (const app of [a, b]) expect(await health(app)).toMatchObject({ status: 'healthy', memory_service_available: true });
  });
});
