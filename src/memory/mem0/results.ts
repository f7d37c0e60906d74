/**
 * Mapping engine results to the contract's MemoryItem, shared with the Platform backend: results
 * are narrowed from `unknown`, and a memory is only ever returned to the user it belongs to.
 */
import { z } from 'zod';
import { NotFoundError } from '../../errors';
import type { ListFilter, MemoryItem } from '../types';

const dateish = z
  .union([z.string(), z.date()])
  .nullish()
  .transform((v) => (v === null || v === undefined ? null : v instanceof Date ? v.toISOString() : v));
const optionalId = z
  .union([z.string(), z.number()])
  .nullish()
  .transform((v) => (v === null || v === undefined || v === '' ? undefined : String(v)));

/**
 * What the engines return for a memory, in either spelling: mem0 OSS uses snake_case ids and
 * camelCase dates; the Platform client camel-cases everything but `metadata`; Platform add
 * results (output format v1.1) carry the text in `data.memory`.
 */
const engineItemSchema = z
  .object({
    id: z.union([z.string(), z.number()]).transform(String),
    memory: z.string().nullish(),
    data: z.object({ memory: z.string().nullish() }).passthrough().nullish(),
    user_id: optionalId,
    userId: optionalId,
    agent_id: optionalId,
    agentId: optionalId,
    run_id: optionalId,
    runId: optionalId,
    metadata: z.record(z.string(), z.unknown()).nullish(),
    created_at: dateish,
    createdAt: dateish,
    updated_at: dateish,
    updatedAt: dateish,
    score: z.number().nullish(),
  })
  .passthrough();

type EngineItem = z.infer<typeof engineItemSchema>;

function parseEngineItem(raw: unknown): EngineItem | undefined {
  const parsed = engineItemSchema.safeParse(raw);
  return parsed.success ? parsed.data : undefined;
}

/** The user a raw engine memory belongs to, if it names one. */
export function engineItemOwner(raw: unknown): string | undefined {
  const item = parseEngineItem(raw);
  return item ? (item.user_id ?? item.userId) : undefined;
}

/**
 * Narrows one engine result into the contract's item, or undefined when it is not a memory
 * (no id or no text). `fallbackUserId` fills in a missing owner for results the engine already
 * filtered by user.
 */
export function toMemoryItem(raw: unknown, fallbackUserId: string): MemoryItem | undefined {
  const item = parseEngineItem(raw);
  if (!item) return undefined;
  const text = item.memory ?? item.data?.memory;
  if (typeof text !== 'string') return undefined;
  const out: MemoryItem = {
    id: item.id,
    memory: text,
    user_id: item.user_id ?? item.userId ?? fallbackUserId,
    metadata: { ...(item.metadata ?? {}) },
    created_at: item.created_at ?? item.createdAt,
    updated_at: item.updated_at ?? item.updatedAt,
  };
  const agentId = item.agent_id ?? item.agentId;
  const runId = item.run_id ?? item.runId;
  if (agentId !== undefined) out.agent_id = agentId;
  if (runId !== undefined) out.run_id = runId;
  if (typeof item.score === 'number' && Number.isFinite(item.score)) out.score = item.score;
  return out;
}

/**
 * Maps a list of engine results, keeping only this user's memories: the engines filter by user
 * already, and this makes sure a filter bug could never hand out someone else's memory.
 */
export function toUserItems(raws: readonly unknown[], userId: string): MemoryItem[] {
  const out: MemoryItem[] = [];
  for (const raw of raws) {
    const item = toMemoryItem(raw, userId);
    if (item && item.user_id === userId) out.push(item);
  }
  return out;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** mem0 (OSS and Platform) gives every memory a UUID: no other id can exist. */
export function isMemoryId(id: string): boolean {
  return UUID.test(id);
}

export function memoryNotFound(): NotFoundError {
  return new NotFoundError('Memory not found', 'No memory with this id for this user');
}

/** Whether a memory passes the console's filters (text substring, creation window). */
export function matchesListFilter(filter: ListFilter): (item: MemoryItem) => boolean {
  const text = filter.text?.toLowerCase();
  const since = filter.since === undefined ? undefined : Date.parse(filter.since);
  const until = filter.until === undefined ? undefined : Date.parse(filter.until);
  return (item) => {
    if (text !== undefined && !item.memory.toLowerCase().includes(text)) return false;
    if (since === undefined && until === undefined) return true;
    const created = item.created_at === null ? NaN : Date.parse(item.created_at);
    if (Number.isNaN(created)) return false;
    return (since === undefined || created >= since) && (until === undefined || created < until);
  };
}
