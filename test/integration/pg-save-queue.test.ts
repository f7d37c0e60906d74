/**
 * The save queue shared by several instances, on this machine's PostgreSQL 15 (a database made
 * and dropped by this file): idempotent enqueue across instances, two instances draining one
 * backlog without saving a job twice, a claim of a SIGKILLed worker taken over after its lease
 * (and not before), backoff and dead jobs, the outage pause, a database that is not there, and the
 * pending jobs of an earlier SQLite queue moved in.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryRejectedError, MemoryUnavailableError } from '../../src/errors';
import { PostgresSaveQueue, type PostgresSaveQueueOptions } from '../../src/memory/pg-save-queue';
import { SaveQueue, type SaveAttempt, type SaveJob } from '../../src/memory/save-queue';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres';
import { waitFor } from '../helpers/wait';

const ROOT = path.resolve(__dirname, '..', '..');
let db: TestDatabase;
const open: PostgresSaveQueue[] = [];

beforeAll(async () => {
  db = await createTestDatabase('mp_queue');
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((q) => q.stop()));
  await db.query('DROP TABLE IF EXISTS mp_save_jobs');
});
afterAll(() => db.drop());

function queue(save: (job: SaveAttempt) => Promise<unknown>, options: Partial<PostgresSaveQueueOptions> = {}): PostgresSaveQueue {
  const q = new PostgresSaveQueue({ connectionString: db.url, save, pollMs: 30, baseDelayMs: 20, maxDelayMs: 100, ...options });
  open.push(q);
  return q;
}

const job = (n: number, userId = 'u'): SaveJob => ({
  id: `job-${n}`,
  scope: { userId },
  messages: [{ role: 'user', content: `message ${n}` }],
  metadata: { n },
});
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

it('enqueues once per id across instances, keeps the job in the database, and drops its text once saved', async () => {
  const saved: string[] = [];
  const a = queue(async (j) => void saved.push(j.id));
  const b = queue(async (j) => void saved.push(j.id));
  expect(await a.enqueue(job(1))).toBe(true);
  expect(await b.enqueue(job(1))).toBe(false);
  const [row] = await db.query<{ state: string; messages: unknown; user_id: string }>(
    "SELECT state, messages, user_id FROM mp_save_jobs WHERE id = 'job-1'",
  );
  expect(row).toEqual({ state: 'pending', messages: [{ role: 'user', content: 'message 1' }], user_id: 'u' });
  a.start();
  await a.drained(5000);
  expect(saved).toEqual(['job-1']);
  const [done] = await db.query<{ state: string; messages: unknown }>("SELECT state, messages FROM mp_save_jobs WHERE id = 'job-1'");
  expect(done).toEqual({ state: 'done', messages: [] });
  // A replay after the save is still ignored, on either instance.
  expect(await b.enqueue(job(1))).toBe(false);
  expect((await a.status('job-1'))?.state).toBe('done');
});

it('two instances draining one backlog save every job exactly once, both doing part of it', async () => {
  const seen = new Map<string, string[]>();
  const save = (who: string) => async (j: SaveAttempt) => {
    await sleep(5 + Math.random() * 15);
    seen.set(j.id, [...(seen.get(j.id) ?? []), who]);
  };
  const a = queue(save('a'), { concurrency: 3 });
  const b = queue(save('b'), { concurrency: 3 });
  for (let n = 0; n < 60; n++) await (n % 2 === 0 ? a : b).enqueue(job(n));
  a.start();
  b.start();
  await a.drained(20_000);
  await b.drained(20_000);
  expect(seen.size).toBe(60);
  expect([...seen.values()].filter((who) => who.length !== 1)).toEqual([]);
  const by = [...seen.values()].flat();
  expect(by.filter((w) => w === 'a').length).toBeGreaterThan(0);
  expect(by.filter((w) => w === 'b').length).toBeGreaterThan(0);
  expect(a.depth()).toBe(0);
});

it('takes over the claim of a SIGKILLed worker once its lease has passed, not before', async () => {
  const leaseMs = 1500;
  const setup = queue(async () => undefined);
  await setup.enqueue(job(7));
  const worker = spawn(
    process.execPath,
    ['--import', require.resolve('tsx'), path.join(ROOT, 'test', 'fixtures', 'hanging-queue-worker.ts')],
    {
      env: { PATH: process.env.PATH ?? '', QUEUE_URL: db.url, LEASE_MS: String(leaseMs) },
    },
  );
  let out = '';
  worker.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  await waitFor(() => (out.includes('claimed job-7') ? true : undefined), 20_000, 'the worker to claim the job');
  worker.kill('SIGKILL');
  await exited;
  const killedAt = Date.now();

  const saved: { id: string; attempt: number; at: number }[] = [];
  const b = queue(async (j) => void saved.push({ id: j.id, attempt: j.attempt, at: Date.now() }));
  b.start();
  await waitFor(() => (saved.length > 0 ? true : undefined), 10_000, 'the takeover');
  expect(saved).toHaveLength(1);
  expect(saved[0]?.attempt).toBe(2);
  // Claimed at most leaseMs before the kill; taken over no earlier than the lease allows.
  expect((saved[0]?.at ?? 0) - killedAt).toBeGreaterThan(leaseMs - 1000);
  await b.drained(5000);
  expect((await b.status('job-7'))?.state).toBe('done');
});

it('hands a stopped instance’s unfinished claims back at once', async () => {
  let release: () => void = () => undefined;
  const a = queue(() => new Promise<void>((resolve) => (release = resolve)), { stopTimeoutMs: 100, leaseMs: 60_000 });
  await a.enqueue(job(3));
  a.start();
  await waitFor(async () => ((await a.status('job-3'))?.attempts === 1 ? true : undefined), 5000, 'the claim');
  await a.stop();
  const saved: string[] = [];
  const b = queue(async (j) => void saved.push(j.id));
  b.start();
  await b.drained(5000);
  expect(saved).toEqual(['job-3']);
  release();
});

it('retries transient failures with backoff, makes a permanent one dead at once, and counts failures per instance', async () => {
  let failing = 3;
  const dead: string[] = [];
  const a = queue(
    async (j) => {
      if (j.id === 'job-bad') throw new MemoryRejectedError();
      if (failing-- > 0) throw new MemoryUnavailableError(true);
    },
    { onDead: (id) => dead.push(id) },
  );
  await a.enqueue(job(1));
  await a.enqueue({ ...job(2), id: 'job-bad' });
  a.start();
  await a.drained(10_000);
  expect(await a.status('job-1')).toMatchObject({ state: 'done', attempts: 4 });
  expect(await a.status('job-bad')).toMatchObject({ state: 'dead', lastError: expect.stringContaining('MemoryRejectedError') });
  expect(dead).toEqual(['job-bad']);
  expect(a.failures).toBe(4);
  expect(a.deadCount()).toBe(1);
});

it('pauses this instance while saves fail transiently, and drains everything once the service is back', async () => {
  let down = true;
  const calls: number[] = [];
  const a = queue(
    async () => {
      calls.push(Date.now());
      if (down) throw new MemoryUnavailableError(true);
    },
    { baseDelayMs: 200, maxDelayMs: 400, concurrency: 1 },
  );
  for (let n = 0; n < 10; n++) await a.enqueue(job(n));
  a.start();
  await sleep(1500);
  // An outage costs a few probes, not ten jobs times their retries.
  expect(calls.length).toBeLessThan(12);
  down = false;
  await a.drained(10_000);
  expect(a.depth()).toBe(0);
  expect((await db.query<{ n: number }>("SELECT count(*)::int AS n FROM mp_save_jobs WHERE state = 'done'"))[0]?.n).toBe(10);
});

it('fails an enqueue within its deadline while the database cannot be reached', async () => {
  const q = new PostgresSaveQueue({
    connectionString: 'postgres://postgres@127.0.0.1:1/none',
    save: async () => undefined,
    enqueueTimeoutMs: 300,
  });
  open.push(q);
  const started = Date.now();
  await expect(q.enqueue(job(1))).rejects.toThrow(/did not commit within 300 ms/);
  expect(Date.now() - started).toBeLessThan(2000);
});

it('moves the pending exchanges of the instance’s earlier SQLite queue into the shared one, once', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'queue-import-'));
  const file = path.join(dir, 'save-queue.db');
  const local = new SaveQueue({ path: file, save: async () => undefined });
  local.enqueue(job(1));
  local.enqueue(job(2));
  await local.stop();
  const saved: string[] = [];
  const a = queue(async (j) => void saved.push(`${j.id}:${j.messages[0]?.content ?? ''}`), { localPath: file });
  a.start();
  await waitFor(() => (saved.length === 2 ? true : undefined), 10_000, 'the imported jobs to be saved');
  expect(saved.sort()).toEqual(['job-1:message 1', 'job-2:message 2']);
  await a.stop();
  open.splice(open.indexOf(a), 1);
  // Imported once: a second start finds nothing pending locally, and the ids stay known.
  const b = queue(async (j) => void saved.push(j.id), { localPath: file });
  b.start();
  await sleep(300);
  expect(saved).toHaveLength(2);
  expect(await b.enqueue(job(1))).toBe(false);
  fs.rmSync(dir, { recursive: true, force: true });
});

it('keeps exchanges in the local file while its database is not there, and moves them in once it is', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'queue-spool-'));
  const file = path.join(dir, 'save-queue.db');
  const late = `${db.name}_late`;
  const url = db.url.replace(/\/[^/]+$/, `/${late}`);
  const saved: string[] = [];
  const q = new PostgresSaveQueue({
    connectionString: url,
    save: async (j) => void saved.push(j.id),
    localPath: file,
    pollMs: 30,
    enqueueTimeoutMs: 500,
  });
  open.push(q);
  q.start();
  try {
    // The database does not exist yet: both are kept locally, committed, and counted in the depth.
    expect(await q.enqueue(job(1))).toBe(true);
    expect(await q.enqueue(job(2))).toBe(true);
    expect(await q.enqueue(job(1))).toBe(false);
    expect(q.depth()).toBe(2);
    expect(saved).toEqual([]);
    await db.query(`CREATE DATABASE ${late}`);
    await waitFor(() => (saved.length === 2 ? true : undefined), 20_000, 'the kept exchanges to be moved in and saved');
    expect(saved.sort()).toEqual(['job-1', 'job-2']);
    await q.drained(5000);
    expect(q.depth()).toBe(0);
  } finally {
    await q.stop();
    open.splice(open.indexOf(q), 1);
    await db.query(`DROP DATABASE IF EXISTS ${late} WITH (FORCE)`);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
