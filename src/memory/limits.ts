/**
 * Input and output limits of the memory API, shared by the admin routes and the MCP tools, so a
 * caller meets the same rules on both doors.
 *
 * Output is bounded by bytes as well as by count: a search or list answers at most
 * `MAX_RESULT_BYTES` of memories (best first; the rest is left off and the answer says
 * `truncated`), so a tenant who stored large memories cannot make one answer, or a few at once,
 * exhaust the process's heap.
 */
import type { MemoryItem } from './types';

/** Most memories one search or list may ask for. */
export const MAX_LIMIT = 1000;
export const MAX_QUERY_CHARS = 8000;
/** Longest message or content sent for extraction (the engine's model turns it into short facts). */
export const MAX_CONTENT_CHARS = 100_000;
export const MAX_MESSAGES = 200;
/** Longest memory stored as it is (`infer: false`): a note, not a document. */
export const MAX_MEMORY_CHARS = 8000;
/** Longest user, agent, run or memory id. */
export const MAX_ID_CHARS = 256;
/** Furthest a list may page (`offset`). */
export const MAX_OFFSET = 1_000_000;
/** Most characters of a memory's metadata, as JSON. */
export const MAX_METADATA_CHARS = 16_000;
/** Most bytes of memories (as JSON) in one answer. */
export const MAX_RESULT_BYTES = 4 * 1024 * 1024;

/** `memories` up to `maxBytes` of JSON, in order; `truncated` when some were left off. */
export function capResults(memories: readonly MemoryItem[], maxBytes = MAX_RESULT_BYTES): { memories: MemoryItem[]; truncated: boolean } {
  const kept: MemoryItem[] = [];
  let bytes = 0;
  for (const memory of memories) {
    bytes += Buffer.byteLength(JSON.stringify(memory)) + 1;
    if (bytes > maxBytes) return { memories: kept, truncated: true };
    kept.push(memory);
  }
  return { memories: kept, truncated: false };
}

/** The answer of a search or list: the memories that fit, their count, and `truncated` when some did not. */
export function resultBody(memories: readonly MemoryItem[]): { memories: MemoryItem[]; count: number; truncated?: true } {
  const capped = capResults(memories);
  return { memories: capped.memories, count: capped.memories.length, ...(capped.truncated ? { truncated: true as const } : {}) };
}
