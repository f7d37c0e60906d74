/**
 * Polling for the integration tests that wait on the proxy's background work (the save queue,
 * memories appearing): `waitFor` retries a probe until it yields a value, and `memoriesOf` is the
 * probe they mostly poll, what the proxy's `/list` returns for a user.
 */
import request from 'supertest';
import type { MemoryItem } from '../../src/memory/types';
import type { MemoryProxy } from './memory-proxy';
import { TEST_AUTH_TOKEN } from './secrets';

/** Calls `probe` every 50 ms until it returns something other than undefined, and returns that. */
export async function waitFor<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 8000, what = 'condition'): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`${what} not met in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The memories `/list` returns for `userId` (as the admin token by default). */
export async function memoriesOf(
  p: Pick<MemoryProxy, 'app'>,
  userId: string,
  headers: Record<string, string> = { Authorization: `Bearer ${TEST_AUTH_TOKEN}` },
): Promise<MemoryItem[]> {
  const res = await request(p.app.app).post('/list').set(headers).send({ user_id: userId }).expect(200);
  return (res.body as { memories: MemoryItem[] }).memories;
}
