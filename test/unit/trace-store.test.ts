/**
 * The injection trace's ring: bounded to the last N requests, save outcomes found again by
 * exchange id, queries by user and request id, prompt text only when asked to keep it, and
 * kept across a reopen.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../../src/config';
import { TraceStore, type TraceInput } from '../../src/memory/trace-store';
import type { MemoryItem } from '../../src/memory/types';
import { captureLogger } from '../helpers/app';

const { logger } = captureLogger(loadConfig({ env: {} }));
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'traces-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const memory = (id: string, score: number): MemoryItem => ({
  id,
  memory: `text of ${id}`,
  user_id: 'u',
  metadata: {},
  created_at: null,
  updated_at: null,
  score,
});

function input(n: number, userId = 'u'): TraceInput {
  const recalled = [memory(`m${n}a`, 0.9), memory(`m${n}b`, 0.5)];
  return {
    requestId: `req-${n}`,
    exchangeId: `ex-${n}`,
    callerId: 'token',
    scope: { userId },
    api: 'openai',
    route: '/v1/chat/completions',
    model: 'gpt-test',
    searchMs: 12.345,
    recalled,
    injected: recalled.slice(0, 1),
    prompt: `secret prompt ${n}`,
  };
}

it('keeps only the last N requests, newest first', () => {
  const store = TraceStore.open(path.join(dir, 'traces.db'), { max: 3, keepText: false, logger });
  for (let n = 1; n <= 5; n++) store.record(input(n));
  expect(store.query({ limit: 10 }).map((t) => t.request_id)).toEqual(['req-5', 'req-4', 'req-3']);
  store.close();
});

it('records ids and scores, not the prompt, unless told to keep text', () => {
  const plain = TraceStore.open(path.join(dir, 'a.db'), { max: 10, keepText: false, logger });
  plain.record(input(1));
  const [trace] = plain.query({ limit: 1 });
  expect(trace).toMatchObject({
    request_id: 'req-1',
    user_id: 'u',
    search_ms: 12.3,
    injected: ['m1a'],
    recalled: [
      { id: 'm1a', score: 0.9 },
      { id: 'm1b', score: 0.5 },
    ],
    save: { status: 'none', memory_ids: [] },
  });
  expect(trace).not.toHaveProperty('prompt');
  expect(fs.readFileSync(path.join(dir, 'a.db')).includes('secret prompt')).toBe(false);
  plain.close();
  const debug = TraceStore.open(path.join(dir, 'b.db'), { max: 10, keepText: true, logger });
  debug.record(input(2));
  expect(debug.query({ limit: 1 })[0]?.prompt).toBe('secret prompt 2');
  debug.close();
});

it('follows an exchange from queued to saved or failed, found by user and request id, across a reopen', () => {
  const file = path.join(dir, 'traces.db');
  const store = TraceStore.open(file, { max: 10, keepText: false, logger });
  store.record(input(1, 'amy'));
  store.record(input(2, 'ben'));
  store.queued('ex-1');
  store.queued('ex-2');
  store.saved('ex-1', ['new-1', 'new-2']);
  store.failed('ex-2', 'x'.repeat(2000));
  store.close();
  const again = TraceStore.open(file, { max: 10, keepText: false, logger });
  expect(again.query({ userId: 'amy', limit: 10 }).map((t) => t.save)).toEqual([{ status: 'saved', memory_ids: ['new-1', 'new-2'] }]);
  const failed = again.query({ requestId: 'req-2', limit: 10 });
  expect(failed).toHaveLength(1);
  expect(failed[0]?.save.status).toBe('failed');
  expect(failed[0]?.save.error).toHaveLength(500);
  expect(again.query({ userId: 'amy', requestId: 'req-2', limit: 10 })).toEqual([]);
  again.close();
  // Closed: no throw, nothing recorded.
  expect(() => again.record(input(3))).not.toThrow();
  expect(again.query({ limit: 10 })).toEqual([]);
});

it('commits the writes of a turn of the event loop together: a query sees them at once, another reader after the turn', async () => {
  const file = path.join(dir, 'traces.db');
  const store = TraceStore.open(file, { max: 10, keepText: false, logger });
  const reader = new Database(file, { readonly: true });
  const count = (): number => (reader.prepare('SELECT count(*) AS n FROM traces').get() as { n: number }).n;
  for (let n = 1; n <= 3; n++) store.record(input(n));
  store.queued('ex-2');
  expect(count()).toBe(0); // gathered, not committed yet
  await new Promise((resolve) => setImmediate(resolve));
  expect(count()).toBe(3);
  expect(reader.prepare("SELECT save_status FROM traces WHERE exchange_id = 'ex-2'").pluck().get()).toBe('queued');

  store.record(input(4));
  store.saved('ex-2', ['m1']);
  expect(store.query({ limit: 10 }).map((t) => t.request_id)).toEqual(['req-4', 'req-3', 'req-2', 'req-1']);
  expect(store.query({ requestId: 'req-2', limit: 1 })[0]?.save).toEqual({ status: 'saved', memory_ids: ['m1'] });
  store.record(input(5));
  store.close(); // commits what was gathered
  expect(count()).toBe(5);
  reader.close();
});
