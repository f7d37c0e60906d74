/**
 * The durable save queue: saved once, replays ignored, retried with backoff through outages,
 * bounded concurrency, dead letters, and nothing lost across a stop, a restart or a SIGKILL.
 * Real SQLite files in a temp dir; delays in milliseconds.
 */
import { spawn } from 'node:child_process';
import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryRejectedError, MemoryUnavailableError } from '../../src/errors';
import { SaveQueue, type SaveAttempt, type SaveJob, type SaveQueueOptions } from '../../src/memory/save-queue';

let dir: string;
let queues: SaveQueue[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'save-queue-'));
  queues = [];
});

afterEach(async () => {
  for (const q of queues) await q.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function dbPath(): string {
  return path.join(dir, 'data', 'save-queue.db');
}

/** A queue on the test's file with fast timings; stopped after the test. */
function makeQueue(options: Partial<SaveQueueOptions> & Pick<SaveQueueOptions, 'save'>): SaveQueue {
  const q = new SaveQueue({ path: dbPath(), baseDelayMs: 10, maxDelayMs: 100, stopTimeoutMs: 200, ...options });
  queues.push(q);
  return q;
}

function job(id: string, text = `hello ${id}`): SaveJob {
  return {
    id,
    scope: { userId: 'alice', agentId: 'agent-1' },
    messages: [
      { role: 'user', content: text },
      { role: 'assistant', content: `reply to ${text}` },
    ],
    metadata: { model: 'gpt-4o-mini', request_id: id },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('SaveQueue', () => {
  it('saves an enqueued exchange once, with its scope, messages, metadata and attempt number', async () => {
    const saved: SaveAttempt[] = [];
    const depths: number[] = [];
    const q = makeQueue({ save: async (j) => void saved.push(j), onDepth: (n) => depths.push(n) });
    q.start();
    expect(q.enqueue(job('req-1'))).toBe(true);
    await q.drained(2000);
    expect(saved).toEqual([{ ...job('req-1'), attempt: 1 }]);
    expect(q.status('req-1')).toMatchObject({ state: 'done', attempts: 1, lastError: null });
    expect(q.depth()).toBe(0);
    expect(depths).toEqual([0, 1, 0]);
  });

  it('keeps jobs enqueued before start and saves them on start', async () => {
    const saved: string[] = [];
    const q = makeQueue({ save: async (j) => void saved.push(j.id) });
    q.enqueue(job('a'));
    q.enqueue(job('b'));
    expect(q.depth()).toBe(2);
    await sleep(30);
    expect(saved).toEqual([]);
    q.start();
    await q.drained(2000);
    expect(saved.sort()).toEqual(['a', 'b']);
  });

  it('ignores a duplicate id while pending, after completion, and after a restart', async () => {
    let calls = 0;
    const save = async (): Promise<void> => {
      calls++;
    };
    const q = makeQueue({ save });
    expect(q.enqueue(job('dup'))).toBe(true);
    expect(q.enqueue(job('dup', 'different text'))).toBe(false);
    expect(q.depth()).toBe(1);
    q.start();
    await q.drained(2000);
    expect(q.enqueue(job('dup'))).toBe(false);
    await q.stop();
    const again = makeQueue({ save });
    again.start();
    expect(again.enqueue(job('dup'))).toBe(false);
    await again.drained(2000);
    expect(calls).toBe(1);
  });

  it('forgets completed ids (and their text) after the retention period', async () => {
    const q = makeQueue({ save: async () => undefined });
    q.start();
    q.enqueue(job('old', 'secret text'));
    await q.drained(2000);
    await q.stop();
    // Only the id is kept to ignore replays: the exchange's text is gone once it is saved.
    const db = new Database(dbPath(), { readonly: true });
    try {
      expect(db.prepare(`SELECT state, messages, metadata FROM save_jobs WHERE id = 'old'`).get()).toEqual({
        state: 'done',
        messages: '[]',
        metadata: '{}',
      });
    } finally {
      db.close();
    }
    const later = makeQueue({ save: async () => undefined, retentionMs: 0 });
    later.start();
    await sleep(20);
    expect(later.status('old')).toBeUndefined();
    expect(later.enqueue(job('old'))).toBe(true);
  });

  it('retries a failed save with growing backoff and saves it once the memory service is back', async () => {
    const times: number[] = [];
    const failures: unknown[] = [];
    const q = makeQueue({
      baseDelayMs: 20,
      maxDelayMs: 1000,
      random: () => 1,
      onFailure: (err) => failures.push(err),
      save: async () => {
        times.push(Date.now());
        if (times.length <= 3) throw new MemoryUnavailableError(true);
      },
    });
    q.start();
    q.enqueue(job('flaky'));
    await q.drained(5000);
    expect(times).toHaveLength(4);
    const gaps = times.slice(1).map((t, i) => t - (times[i] ?? 0));
    // 20, 40, 80 ms (jitter pinned to 100 %), never sooner.
    expect(gaps[0]).toBeGreaterThanOrEqual(18);
    expect(gaps[1]).toBeGreaterThanOrEqual(38);
    expect(gaps[2]).toBeGreaterThanOrEqual(78);
    expect(q.failures).toBe(3);
    expect(failures).toHaveLength(3);
    expect(q.status('flaky')).toMatchObject({ state: 'done', attempts: 4, hardFailures: 0 });
  });

  it('never dead-letters memory-unavailable failures, however many', async () => {
    let calls = 0;
    const q = makeQueue({
      maxFailures: 2,
      baseDelayMs: 1,
      maxDelayMs: 5,
      save: async () => {
        calls++;
        if (calls <= 6) throw new MemoryUnavailableError(calls % 2 === 0);
      },
    });
    q.start();
    q.enqueue(job('outage'));
    await q.drained(5000);
    expect(q.status('outage')).toMatchObject({ state: 'done', attempts: 7 });
  });

  it('moves a job that keeps failing (not transiently) to dead, keeping its error', async () => {
    let calls = 0;
    const logged: string[] = [];
    const q = makeQueue({
      maxFailures: 3,
      logger: { warn: (message) => logged.push(message) },
      save: async () => {
        calls++;
        throw new Error(`engine rejected it #${calls}`);
      },
    });
    q.start();
    q.enqueue(job('poison'));
    q.enqueue(job('fine-later'));
    await until(() => q.status('poison')?.state === 'dead');
    expect(calls).toBeGreaterThanOrEqual(3);
    expect(q.status('poison')).toMatchObject({
      state: 'dead',
      hardFailures: 3,
      lastError: expect.stringContaining('engine rejected it #') as unknown,
    });
    expect(q.deadCount()).toBeGreaterThanOrEqual(1);
    expect(q.enqueue(job('poison'))).toBe(false);
    expect(logged).toContain('save queue gave up on a job (dead)');
    await until(() => q.depth() === 0);
  });

  it('runs at most `concurrency` saves at once', async () => {
    let running = 0;
    let peak = 0;
    const done: string[] = [];
    const q = makeQueue({
      concurrency: 3,
      save: async (j) => {
        running++;
        peak = Math.max(peak, running);
        await sleep(15);
        running--;
        done.push(j.id);
      },
    });
    for (let i = 0; i < 10; i++) q.enqueue(job(`c${i}`));
    q.start();
    await q.drained(5000);
    expect(peak).toBe(3);
    expect(done).toHaveLength(10);
  });

  it('reports depth: pending and running jobs count, dead ones do not', async () => {
    const depths: number[] = [];
    let release: (() => void) | undefined;
    const q = makeQueue({
      maxFailures: 1,
      onDepth: (n) => depths.push(n),
      save: (j) =>
        j.id === 'bad'
          ? Promise.reject(new Error('bad'))
          : new Promise<void>((resolve) => {
              release = resolve;
            }),
    });
    q.enqueue(job('slow'));
    q.enqueue(job('bad'));
    expect(q.depth()).toBe(2);
    q.start();
    await until(() => q.status('bad')?.state === 'dead' && release !== undefined);
    expect(q.depth()).toBe(1);
    release?.();
    await q.drained(2000);
    expect(q.depth()).toBe(0);
    expect(depths[depths.length - 1]).toBe(0);
    expect(Math.max(...depths)).toBe(2);
  });

  it('stop() waits for running saves, leaves the rest on disk, and a new queue drains them', async () => {
    let down = true;
    const saved: string[] = [];
    const first = makeQueue({
      concurrency: 1,
      save: async (j) => {
        await sleep(30);
        if (down) throw new MemoryUnavailableError(true);
        saved.push(j.id);
      },
    });
    first.start();
    for (const id of ['r1', 'r2', 'r3']) first.enqueue(job(id));
    await until(() => first.failures >= 1);
    await first.stop();
    expect(() => first.enqueue(job('late'))).toThrow(/after stop/);
    expect(saved).toEqual([]);

    down = false;
    const second = makeQueue({ save: async (j) => void saved.push(j.id) });
    expect(second.depth()).toBe(3);
    second.start();
    await second.drained(3000);
    expect(saved.sort()).toEqual(['r1', 'r2', 'r3']);
  });

  it('stop() lets a running save finish and records it', async () => {
    const q = makeQueue({ stopTimeoutMs: 2000, save: () => sleep(50) });
    q.start();
    q.enqueue(job('finishing'));
    await sleep(10);
    await q.stop();
    const reopened = makeQueue({ save: async () => undefined });
    expect(reopened.status('finishing')?.state).toBe('done');
    expect(reopened.depth()).toBe(0);
  });

  it('retries a job that was in flight when the process died (no stop)', async () => {
    const crashed = makeQueue({ save: () => new Promise<never>(() => undefined) });
    crashed.start();
    crashed.enqueue(job('inflight'));
    await until(() => crashed.status('inflight')?.attempts === 1);
    // The "crashed" process never recorded an outcome; a new process opens the same file.
    const saved: SaveAttempt[] = [];
    const restarted = makeQueue({ save: async (j) => void saved.push(j) });
    expect(restarted.depth()).toBe(1);
    restarted.start();
    await restarted.drained(3000);
    expect(saved.map((j) => [j.id, j.attempt])).toEqual([['inflight', 2]]);
    expect(restarted.status('inflight')?.state).toBe('done');
  });

  it('retries a job whose process was SIGKILLed mid-save', async () => {
    const script = path.join(dir, 'child.js');
    const modulePath = path.resolve(__dirname, '../../src/memory/save-queue.ts');
    fs.writeFileSync(
      script,
      `const { SaveQueue } = require(${JSON.stringify(modulePath)});
       const q = new SaveQueue({ path: process.argv[2], baseDelayMs: 20, save: () => { process.stdout.write('in-flight\\n'); return new Promise(() => {}); } });
       q.enqueue(${JSON.stringify(job('killed'))});
       q.start();
       setInterval(() => {}, 1000);`,
    );
    const child = spawn(process.execPath, ['--require', require.resolve('tsx/cjs'), script, dbPath()], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        if (c.toString().includes('in-flight')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`child exited (${String(code)}): ${stderr}`)));
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;

    const saved: string[] = [];
    const restarted = makeQueue({ save: async (j) => void saved.push(j.id) });
    restarted.start();
    await restarted.drained(5000);
    expect(saved).toEqual(['killed']);
    expect(restarted.status('killed')).toMatchObject({ state: 'done', attempts: 2 });
  }, 20000);

  it("moves a job the engine's model refused (too long, say) to dead at once, and goes on with the others", async () => {
    const saved: string[] = [];
    let dead = 0;
    const q = makeQueue({
      onDead: () => dead++,
      save: async (attempt) => {
        if (attempt.id === 'too-long') throw new MemoryRejectedError();
        saved.push(attempt.id);
      },
    });
    q.enqueue(job('too-long'));
    q.enqueue(job('next'));
    q.start();
    await until(() => q.status('too-long')?.state === 'dead' && saved.includes('next'));
    expect(q.status('too-long')).toMatchObject({ state: 'dead', attempts: 1 });
    expect(dead).toBe(1);
  });

  it('does not pause the others for one job that keeps failing transiently', async () => {
    const saved: string[] = [];
    let poisonCalls = 0;
    const q = makeQueue({
      baseDelayMs: 1000,
      maxDelayMs: 4000,
      concurrency: 1,
      save: async (attempt) => {
        if (attempt.id === 'poison') {
          poisonCalls++;
          throw new MemoryUnavailableError(true);
        }
        saved.push(attempt.id);
      },
    });
    q.enqueue(job('poison'));
    q.start();
    await until(() => poisonCalls === 1);
    const started = Date.now();
    for (let i = 0; i < 5; i++) q.enqueue(job(`u${i}`));
    await until(() => saved.length === 5, 3000);
    // Paused, they would wait out the poison job's backoff (500-1000 ms) first.
    expect(Date.now() - started).toBeLessThan(400);
    expect(q.status('poison')?.state).toBe('pending');
  });

  it('pauses during an outage instead of hammering the memory service', async () => {
    let calls = 0;
    const q = makeQueue({
      baseDelayMs: 20,
      maxDelayMs: 80,
      concurrency: 2,
      save: async () => {
        calls++;
        throw new MemoryUnavailableError(true);
      },
    });
    for (let i = 0; i < 20; i++) q.enqueue(job(`o${i}`));
    q.start();
    await sleep(400);
    // Without the queue-wide pause 20 jobs x ~6 retries each would run; with it, about one per pause.
    expect(calls).toBeLessThan(20);
    expect(q.depth()).toBe(20);
  });

  it('drains the whole backlog as soon as the memory service is back', async () => {
    let down = true;
    const savedAt: number[] = [];
    const q = makeQueue({
      baseDelayMs: 20,
      maxDelayMs: 5000,
      save: async () => {
        if (down) throw new MemoryUnavailableError(true);
        savedAt.push(Date.now());
      },
    });
    for (let i = 0; i < 5; i++) q.enqueue(job(`b${i}`));
    q.start();
    await until(() => q.failures >= 5);
    down = false;
    await q.drained(10_000);
    const first = savedAt[0] ?? 0;
    const last = savedAt[savedAt.length - 1] ?? 0;
    expect(savedAt).toHaveLength(5);
    // The first success makes every waiting job due: no job waits out its own backoff.
    expect(last - first).toBeLessThan(200);
  });

  it('drained() rejects when the queue does not empty in time', async () => {
    const q = makeQueue({ save: async () => undefined });
    q.enqueue(job('never-started'));
    await expect(q.drained(30)).rejects.toThrow(/not drained/);
  });

  it('gives up on a save that exceeds its timeout and retries it', async () => {
    let calls = 0;
    const q = makeQueue({
      saveTimeoutMs: 30,
      save: async () => {
        calls++;
        if (calls === 1) await new Promise(() => undefined);
      },
    });
    q.start();
    q.enqueue(job('slow'));
    await q.drained(3000);
    expect(calls).toBe(2);
    expect(q.status('slow')).toMatchObject({ state: 'done', attempts: 2, hardFailures: 0 });
  });
});
