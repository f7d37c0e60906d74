import { MAX_RESULT_BYTES, capResults, resultBody } from '../../src/memory/limits';
import type { MemoryItem } from '../../src/memory/types';

const item = (i: number, chars: number): MemoryItem =>
  ({ id: `m${i}`, memory: 'x'.repeat(chars), user_id: 'u', metadata: {} }) as unknown as MemoryItem;

describe('capResults: answers bounded by bytes', () => {
  it('keeps memories in order up to the byte budget and says when it left some off', () => {
    const memories = Array.from({ length: 10 }, (_, i) => item(i, 1000));
    const one = Buffer.byteLength(JSON.stringify(memories[0])) + 1;
    expect(capResults(memories, one * 10)).toEqual({ memories, truncated: false });
    const capped = capResults(memories, one * 3 + 5);
    expect(capped.memories.map((m) => m.id)).toEqual(['m0', 'm1', 'm2']);
    expect(capped.truncated).toBe(true);
  });

  it('bounds what 1000 memories of 95 KB would make (about 95 MB) to MAX_RESULT_BYTES', () => {
    const memories = Array.from({ length: 1000 }, (_, i) => item(i, 95_000));
    const body = resultBody(memories);
    expect(body.truncated).toBe(true);
    expect(body.count).toBe(body.memories.length);
    expect(Buffer.byteLength(JSON.stringify(body))).toBeLessThanOrEqual(MAX_RESULT_BYTES + 1024);
    expect(resultBody(memories.slice(0, 2))).toEqual({ memories: memories.slice(0, 2), count: 2 });
  });
});
