/**
 * Several instances, nothing lost: two real proxy processes on the pgvector backend (PGlite over
 * its socket) share one save queue in this machine's PostgreSQL. Instance A answers chats while
 * the memory engine's embeddings fail, so every exchange waits in the queue; A is SIGKILLed and
 * never comes back; instance B, started afterwards, saves every one of A's exchanges exactly once
 * when the engine recovers.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { startPgliteServer, type PgliteServer } from '../helpers/pglite-server';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres';
import { listeningPort, startProxyProcess, type ProxyProcess } from '../helpers/process';
import { TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';
import { waitFor } from '../helpers/wait';

jest.setTimeout(120_000);

let fake: FakeUpstream;
let pglite: PgliteServer;
let queueDb: TestDatabase;
let tmp: string;
const running: ProxyProcess[] = [];

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
  pglite = await startPgliteServer();
  queueDb = await createTestDatabase('mp_shared');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shared-queue-'));
}, 90_000);
afterAll(async () => {
  for (const p of running) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await Promise.all(running.map((p) => p.exited));
  await pglite?.close();
  await queueDb?.drop();
  await fake?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function startInstance(name: string): Promise<{ proc: ProxyProcess; port: number }> {
  const dir = fs.mkdtempSync(path.join(tmp, `${name}-`));
  const proc = startProxyProcess(
    {
      SERVER_HOST: '127.0.0.1',
      SERVER_PORT: '0',
      DATA_DIR: path.join(dir, 'data'),
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      UPSTREAM_BASE_URL: fake.url,
      MEMORY_BACKEND: 'pgvector',
      DATABASE_URL: pglite.url,
      SAVE_QUEUE_URL: queueDb.url,
      SAVE_QUEUE_LEASE_MS: '2000',
      EMBEDDING_DIMS: '64',
      RATE_LIMIT_V1: '100000',
      RATE_LIMIT_LIST: '100000',
      RATE_LIMIT_HEALTH: '100000',
    },
    dir,
  );
  running.push(proc);
  return { proc, port: await listeningPort(proc, 60_000) };
}

function call(
  port: number,
  method: string,
  route: string,
  body?: object,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: unknown }> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: route,
        headers: {
          Host: 'localhost',
          Authorization: `Bearer ${TEST_AUTH_TOKEN}`,
          ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}),
          ...headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = text;
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

it('delivers every exchange of a SIGKILLed instance exactly once from another instance', async () => {
  const words = Array.from({ length: 6 }, () => `w${crypto.randomBytes(4).toString('hex')}`);
  const a = await startInstance('a');
  // The memory engine is down: every embedding fails, so recalls fail open and saves wait.
  fake.failNext(503, { times: Infinity, path: '/v1/embeddings' });
  const chat = async (word: string): Promise<void> => {
    const res = await call(
      a.port,
      'POST',
      '/v1/chat/completions',
      { model: 'gpt-test', messages: [{ role: 'user', content: `My code word is ${word}.` }] },
      { 'X-Mem0-User-Id': 'shared-user' },
    );
    expect(res.status).toBe(200);
  };
  for (const word of words.slice(0, -1)) await chat(word);
  // /health shows the shared depth as of the instance's last poll (every second).
  const depth = async (): Promise<number> =>
    ((await call(a.port, 'GET', '/health')).json as { save_queue: { depth: number } }).save_queue.depth;
  await waitFor(async () => ((await depth()) === words.length - 1 ? true : undefined), 5000, 'A’s depth');
  // The last exchange is committed before its response ends: killed the moment it ends, A loses nothing.
  await chat(words[words.length - 1] ?? '');
  a.proc.child.kill('SIGKILL');
  expect(await a.proc.exited).toBe('SIGKILL');
  // Everything A queued is in the shared database, none of it saved.
  const pending = await queueDb.query<{ n: number }>("SELECT count(*)::int AS n FROM mp_save_jobs WHERE state = 'pending'");
  expect(pending[0]?.n).toBe(words.length);

  const b = await startInstance('b');
  fake.clearFaults();
  const texts = await waitFor(
    async () => {
      const res = await call(b.port, 'POST', '/list', { user_id: 'shared-user', limit: 1000 });
      const memories = ((res.json as { memories?: { memory: string }[] }).memories ?? []).map((m) => m.memory);
      return words.every((w) => memories.some((m) => m.includes(w))) ? memories : undefined;
    },
    60_000,
    'B to save A’s exchanges',
  );
  // Give a duplicate time to show up, then count: one memory per code word.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const final = (
    (await call(b.port, 'POST', '/list', { user_id: 'shared-user', limit: 1000 })).json as { memories: { memory: string }[] }
  ).memories.map((m) => m.memory);
  expect(final.length).toBe(texts.length);
  for (const word of words) expect(final.filter((m) => m.includes(word))).toHaveLength(1);
  const states = await queueDb.query<{ state: string; n: number }>('SELECT state, count(*)::int AS n FROM mp_save_jobs GROUP BY state');
  expect(states).toEqual([{ state: 'done', n: words.length }]);
  await waitFor(
    async () =>
      ((await call(b.port, 'GET', '/health')).json as { save_queue: { depth: number } }).save_queue.depth === 0 ? true : undefined,
    5000,
    'B’s depth',
  );
});
