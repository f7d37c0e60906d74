/**
 * The in-memory MemoryService the route tests run on (test/fakes/memory-service.ts): it has to keep
 * the contract the real backends keep, or tests built on it would pass for the wrong reasons.
 */
import { BadRequestError, MemoryUnavailableError, NotFoundError } from '../../src/errors';
import { FakeMemoryService } from '../fakes/memory-service';

const alice = { userId: 'alice' };
const bob = { userId: 'bob' };

function clock(start: string): { now: () => Date; advance(ms: number): void } {
  let t = Date.parse(start);
  return { now: () => new Date(t), advance: (ms) => (t += ms) };
}

describe('FakeMemoryService', () => {
  it('stores messages as given with infer:false (not system ones), and extracted facts with inference on, once each', async () => {
    const memory = new FakeMemoryService();
    const raw = await memory.add(alice, {
      infer: false,
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'Remember the milk' },
      ],
    });
    expect(raw.map((m) => m.memory)).toEqual(['Remember the milk']);
    const inferred = await memory.add(alice, {
      messages: [
        { role: 'user', content: 'My cat is Miso. I live in Porto.' },
        { role: 'assistant', content: 'I see.' },
      ],
    });
    expect(inferred.map((m) => m.memory)).toEqual(['My cat is Miso', 'I live in Porto']);
    expect((await memory.add(alice, { messages: [{ role: 'user', content: 'I live in Porto.' }] })).length).toBe(0);
    // Another user's identical fact is theirs, not a duplicate.
    expect((await memory.add(bob, { messages: [{ role: 'user', content: 'I live in Porto.' }] })).length).toBe(1);
    expect((await memory.list(alice, { limit: 100, offset: 0 })).map((m) => m.memory)).toEqual([
      'Remember the milk',
      'My cat is Miso',
      'I live in Porto',
    ]);
  });

  it('keeps metadata without owner keys, and the agent and run a memory was stored with', async () => {
    const memory = new FakeMemoryService();
    const [item] = await memory.add(
      { userId: 'dave', runId: 'run-1' },
      { infer: false, messages: [{ role: 'user', content: 'x' }], metadata: { source: 't', user_id: 'eve' } },
    );
    expect(item).toMatchObject({ user_id: 'dave', run_id: 'run-1', metadata: { source: 't' } });
    expect(item?.metadata).not.toHaveProperty('user_id');
    expect(item?.agent_id).toBeUndefined();
    await memory.add({ userId: 'dave', agentId: 'a' }, { infer: false, messages: [{ role: 'user', content: 'y' }] });
    expect((await memory.list({ userId: 'dave', runId: 'run-1' }, { limit: 10, offset: 0 })).map((m) => m.memory)).toEqual(['x']);
    expect((await memory.list({ userId: 'dave', agentId: 'a' }, { limit: 10, offset: 0 })).map((m) => m.memory)).toEqual(['y']);
    expect((await memory.list({ userId: 'eve' }, { limit: 10, offset: 0 })).length).toBe(0);
  });

  it('searches by word overlap: best first, scored, within the threshold and the limit, only the scope’s memories', async () => {
    const memory = new FakeMemoryService();
    for (const content of ['Noah plays the cello', 'Noah drinks oat milk', 'Lisbon is sunny'])
      await memory.add({ userId: 'noah' }, { infer: false, messages: [{ role: 'user', content }] });
    await memory.add(bob, { infer: false, messages: [{ role: 'user', content: 'Noah plays the cello' }] });
    // The same words in another order and inflection score 1.
    const found = await memory.search({ userId: 'noah' }, 'the cello Noah played', { limit: 5 });
    expect(found.map((m) => m.memory)).toEqual(['Noah plays the cello', 'Noah drinks oat milk', 'Lisbon is sunny']);
    const scores = found.map((m) => m.score ?? NaN);
    expect(scores[0]).toBeCloseTo(1);
    expect(scores[1]).toBeGreaterThan(0);
    expect(scores[1]).toBeLessThan(scores[0] ?? 0);
    expect(scores[2]).toBe(0);
    expect((await memory.search({ userId: 'noah' }, 'the cello Noah played', { limit: 5, threshold: 0.25 })).map((m) => m.memory)).toEqual([
      'Noah plays the cello',
      'Noah drinks oat milk',
    ]);
    expect((await memory.search({ userId: 'noah' }, 'cello', { limit: 1 })).length).toBe(1);
    expect((await memory.search(bob, 'cello', { limit: 5 })).every((m) => m.user_id === 'bob')).toBe(true);
  });

  it('pages and filters the list by text and creation window before cutting the page', async () => {
    const time = clock('2026-01-01T00:00:00Z');
    const memory = new FakeMemoryService({ now: time.now });
    for (let i = 0; i < 5; i++) {
      await memory.add(alice, { infer: false, messages: [{ role: 'user', content: i % 2 === 0 ? `Even note ${i}` : `odd note ${i}` }] });
      time.advance(60_000);
    }
    const page = (options: Parameters<FakeMemoryService['list']>[1]): Promise<string[]> =>
      memory.list(alice, options).then((items) => items.map((m) => m.memory));
    expect(await page({ limit: 2, offset: 1 })).toEqual(['odd note 1', 'Even note 2']);
    expect(await page({ limit: 10, offset: 1, filter: { text: 'EVEN' } })).toEqual(['Even note 2', 'Even note 4']);
    expect(await page({ limit: 10, offset: 0, filter: { since: '2026-01-01T00:01:00Z', until: '2026-01-01T00:03:00Z' } })).toEqual([
      'odd note 1',
      'Even note 2',
    ]);
  });

  it('gets, updates and deletes only the caller’s own memories; deleteAll clears one scope', async () => {
    const time = clock('2026-02-01T00:00:00Z');
    const memory = new FakeMemoryService({ now: time.now });
    const [mine] = await memory.add(alice, { infer: false, messages: [{ role: 'user', content: 'Alice likes tea' }] });
    const [theirs] = await memory.add(bob, { infer: false, messages: [{ role: 'user', content: 'Bob likes coffee' }] });
    if (!mine || !theirs) throw new Error('setup');
    expect(await memory.get(bob, mine.id)).toBeUndefined();
    await expect(memory.update(bob, mine.id, 'stolen')).rejects.toBeInstanceOf(NotFoundError);
    await expect(memory.delete(bob, mine.id)).rejects.toBeInstanceOf(NotFoundError);
    time.advance(1000);
    expect(await memory.update(alice, mine.id, 'Alice likes green tea')).toMatchObject({
      id: mine.id,
      memory: 'Alice likes green tea',
      created_at: '2026-02-01T00:00:00.000Z',
      updated_at: '2026-02-01T00:00:01.000Z',
    });
    expect((await memory.get(alice, mine.id))?.memory).toBe('Alice likes green tea');
    await memory.delete(alice, mine.id);
    await expect(memory.delete(alice, mine.id)).rejects.toBeInstanceOf(NotFoundError);
    await memory.add(bob, { infer: false, messages: [{ role: 'user', content: 'in a run' }] });
    await memory.deleteAll(bob);
    expect(memory.size).toBe(0);
  });

  it('lists users by id with counts and last activity, filtered and paged, the total on every page', async () => {
    const time = clock('2026-03-01T00:00:00Z');
    const memory = new FakeMemoryService({ now: time.now });
    for (const user of ['u-b', 'u-a', 'u-b', 'x-c']) {
      await memory.add({ userId: user }, { infer: false, messages: [{ role: 'user', content: 'n' }] });
      time.advance(1000);
    }
    expect(await memory.users({ query: 'U-', limit: 10, offset: 0 })).toEqual({
      total: 2,
      users: [
        { user_id: 'u-a', memories: 1, last_activity: '2026-03-01T00:00:01.000Z' },
        { user_id: 'u-b', memories: 2, last_activity: '2026-03-01T00:00:02.000Z' },
      ],
    });
    expect(await memory.users({ limit: 1, offset: 2 })).toMatchObject({ total: 3, users: [{ user_id: 'x-c' }] });
  });

  it('refuses whitespace and "*" in scope ids as bad requests', async () => {
    const memory = new FakeMemoryService();
    await expect(memory.list({ userId: 'a b' }, { limit: 1, offset: 0 })).rejects.toBeInstanceOf(BadRequestError);
    await expect(memory.deleteAll({ userId: 'a', runId: '*' })).rejects.toBeInstanceOf(BadRequestError);
  });

  it('fails, waits and reports itself down when a test says so, and is unavailable once closed', async () => {
    const memory = new FakeMemoryService();
    memory.failNext('search', { times: 2 });
    await expect(memory.search(alice, 'q', { limit: 1 })).rejects.toBeInstanceOf(MemoryUnavailableError);
    await expect(memory.search(alice, 'q', { limit: 1 })).rejects.toBeInstanceOf(MemoryUnavailableError);
    await expect(memory.search(alice, 'q', { limit: 1 })).resolves.toEqual([]);
    await expect(memory.list(alice, { limit: 1, offset: 0 })).resolves.toEqual([]);

    memory.latency.list = 50;
    const started = Date.now();
    await memory.list(alice, { limit: 1, offset: 0 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);

    memory.setAvailable(false);
    expect(await memory.available()).toBe(false);
    memory.setAvailable(true);
    expect(await memory.available()).toBe(true);
    expect(memory.calls.map((c) => c.op)).toEqual(['search', 'search', 'search', 'list', 'list']);

    await memory.close();
    expect(await memory.available()).toBe(false);
    await expect(memory.list(alice, { limit: 1, offset: 0 })).rejects.toMatchObject({ transient: true });
  });
});
