/**
 * The memory admin API (contract §4): `/search`, `/list`, `/remember`, `/forget`.
 * Thin handlers: validate the body, resolve whose memories these are, call the memory service.
 */
import type { Request, RequestHandler } from 'express';
import { z } from 'zod';
import { BadRequestError, NotFoundError } from '../errors';
import { adminScope } from '../memory/scope';
import {
  MAX_CONTENT_CHARS,
  MAX_ID_CHARS,
  MAX_LIMIT,
  MAX_MEMORY_CHARS,
  MAX_MESSAGES,
  MAX_METADATA_CHARS,
  MAX_OFFSET,
  MAX_QUERY_CHARS,
  resultBody,
} from '../memory/limits';
import type { MemoryService } from '../memory/types';

export { MAX_LIMIT };

/** A user, agent, run or memory id in an admin body (the console's endpoints share these). */
export const id = z.string().trim().min(1).max(MAX_ID_CHARS);
export const scopeFields = { user_id: id.optional(), agent_id: id.optional(), run_id: id.optional() };
const metadata = z.record(z.string(), z.unknown()).refine((m) => JSON.stringify(m).length <= MAX_METADATA_CHARS, 'metadata is too large');

const searchBody = z
  .object({
    ...scopeFields,
    query: z.string().trim().min(1).max(MAX_QUERY_CHARS),
    limit: z.number().int().min(1).max(MAX_LIMIT).optional(),
  })
  .strict();
const instant = z
  .string()
  .max(64)
  .refine((v) => /^\d{4}-\d{2}-\d{2}/.test(v) && !Number.isNaN(Date.parse(v)), 'must be an ISO 8601 date or date-time');
const listBody = z
  .object({
    ...scopeFields,
    limit: z.number().int().min(1).max(MAX_LIMIT).optional(),
    offset: z.number().int().min(0).max(MAX_OFFSET).optional(),
    text: z.string().trim().min(1).max(MAX_QUERY_CHARS).optional(),
    since: instant.optional(),
    until: instant.optional(),
  })
  .strict();
const message = z.object({ role: z.enum(['user', 'assistant', 'system']), content: z.string().min(1).max(MAX_CONTENT_CHARS) }).strict();
const rememberBody = z
  .object({
    ...scopeFields,
    messages: z.array(message).min(1).max(MAX_MESSAGES).optional(),
    content: z.string().trim().min(1).max(MAX_CONTENT_CHARS).optional(),
    metadata: metadata.optional(),
    infer: z.boolean().optional(),
  })
  .strict()
  .refine((b) => (b.messages === undefined) !== (b.content === undefined), {
    message: 'Give exactly one of messages or content',
    path: ['messages'],
  })
  .refine((b) => b.infer !== false || (b.messages ?? [{ content: b.content ?? '' }]).every((m) => m.content.length <= MAX_MEMORY_CHARS), {
    message: `A memory stored as it is (infer: false) is at most ${MAX_MEMORY_CHARS} characters; longer text needs infer: true (facts are extracted)`,
    path: ['content'],
  });
/** Most memories one `/forget` may name in `memory_ids`. */
export const MAX_FORGET_IDS = 1000;
const forgetBody = z
  .object({ ...scopeFields, memory_id: id.optional(), memory_ids: z.array(id).min(1).max(MAX_FORGET_IDS).optional() })
  .strict()
  .refine((b) => b.memory_id === undefined || b.memory_ids === undefined, {
    message: 'Give memory_id or memory_ids, not both',
    path: ['memory_ids'],
  });

/** Parses the body with `schema`, or throws the contract's 400 with field-level details. */
export function parse<T>(schema: z.ZodType<T, z.ZodTypeDef, unknown>, req: Request): T {
  const body: unknown = req.body;
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new BadRequestError('Request body must be a JSON object', 'Request body must be a JSON object');
  }
  const result = schema.safeParse(body);
  if (!result.success) {
    const details = result.error.issues.map((i) => ({ field: i.path.join('.') || '(body)', message: i.message }));
    throw new BadRequestError('Invalid request', details);
  }
  return result.data;
}

export interface MemoryRoutes {
  search: RequestHandler;
  list: RequestHandler;
  remember: RequestHandler;
  forget: RequestHandler;
}

export function memoryRoutes(memory: MemoryService, defaults: { searchLimit: number; listLimit: number }): MemoryRoutes {
  const caller = (req: Request): NonNullable<Request['caller']> => {
    if (!req.caller) throw new Error('authenticate must run before the memory routes');
    return req.caller;
  };
  return {
    search: async (req, res) => {
      const body = parse(searchBody, req);
      const scope = adminScope(caller(req), body);
      const memories = await memory.search(scope, body.query, { limit: body.limit ?? defaults.searchLimit });
      res.json(resultBody(memories));
    },
    list: async (req, res) => {
      const body = parse(listBody, req);
      const scope = adminScope(caller(req), body);
      const filter =
        body.text !== undefined || body.since !== undefined || body.until !== undefined
          ? { text: body.text, since: body.since, until: body.until }
          : undefined;
      const memories = await memory.list(scope, { limit: body.limit ?? defaults.listLimit, offset: body.offset ?? 0, filter });
      res.json(resultBody(memories));
    },
    remember: async (req, res) => {
      const body = parse(rememberBody, req);
      const scope = adminScope(caller(req), body);
      const messages = body.messages ?? [{ role: 'user' as const, content: body.content ?? '' }];
      const memories = await memory.add(scope, { messages, metadata: body.metadata, infer: body.infer });
      res.json({ memories, count: memories.length });
    },
    forget: async (req, res) => {
      const body = parse(forgetBody, req);
      const scope = adminScope(caller(req), body);
      if (body.memory_ids !== undefined) {
        // Each one checked and deleted as `memory_id` would be; ids that are not this user's are
        // reported, not deleted.
        const notFound: string[] = [];
        let deleted = 0;
        for (const memoryId of new Set(body.memory_ids)) {
          try {
            await memory.delete(scope, memoryId);
            deleted++;
          } catch (err) {
            if (!(err instanceof NotFoundError)) throw err;
            notFound.push(memoryId);
          }
        }
        res.json({ success: true, message: `${deleted} memories of user ${scope.userId} deleted`, deleted, not_found: notFound });
        return;
      }
      if (body.memory_id !== undefined) {
        await memory.delete(scope, body.memory_id);
        res.json({ success: true, message: `Memory ${body.memory_id} deleted` });
        return;
      }
      await memory.deleteAll(scope);
      res.json({ success: true, message: `All memories of user ${scope.userId} deleted` });
    },
  };
}
