/**
 * The admin endpoints the memory console (`/ui`) is built on, usable with curl like the rest of
 * the admin API: who the caller is, the users directory, editing a memory, the injection preview,
 * the injection trace, an export, and the instance's memory figures.
 *
 * The same identity rules as the admin API: a caller bound to a user sees and changes only that
 * user (naming another is 403); `/stats` is instance-wide and refused to bound callers.
 */
import type { Request, RequestHandler } from 'express';
import { z } from 'zod';
import { ForbiddenError } from '../errors';
import type { Caller } from '../http/context';
import { adminScope } from '../memory/scope';
import type { Logger } from '../logger';
import type { ChatMemory } from '../memory/chat-memory';
import { buildMemoryBlock } from '../memory/injection';
import { MAX_ID_CHARS, MAX_LIMIT, MAX_MEMORY_CHARS, MAX_QUERY_CHARS } from '../memory/limits';
import type { TraceStore } from '../memory/trace-store';
import type { MemoryService } from '../memory/types';
import { id, parse, scopeFields } from './memory';

const usersBody = z
  .object({
    query: z.string().trim().max(MAX_ID_CHARS).optional(),
    limit: z.number().int().min(1).max(MAX_LIMIT).optional(),
    offset: z.number().int().min(0).max(100_000_000).optional(),
  })
  .strict();
const updateBody = z.object({ ...scopeFields, memory_id: id, memory: z.string().trim().min(1).max(MAX_MEMORY_CHARS) }).strict();
const previewBody = z.object({ ...scopeFields, prompt: z.string().trim().min(1).max(MAX_QUERY_CHARS) }).strict();
const MAX_TRACES = 500;
const tracesBody = z
  .object({
    user_id: id.optional(),
    request_id: z.string().trim().min(1).max(256).optional(),
    limit: z.number().int().min(1).max(MAX_TRACES).optional(),
  })
  .strict();
const exportBody = z.object(scopeFields).strict();

/** Memories read per page while an export streams. */
const EXPORT_PAGE = 500;

export interface ConsoleRouteDeps {
  memory: MemoryService;
  chatMemory: ChatMemory;
  traces: TraceStore | undefined;
  maxBlockChars: number;
  logger: Logger;
  saveQueue: (() => { depth: number; failures: number; enqueue_failures: number; writable: boolean }) | undefined;
}

export interface ConsoleRoutes {
  whoami: RequestHandler;
  users: RequestHandler;
  update: RequestHandler;
  preview: RequestHandler;
  traces: RequestHandler;
  exportMemories: RequestHandler;
  stats: RequestHandler;
}

function callerOf(req: Request): Caller {
  if (!req.caller) throw new Error('authenticate must run before the console routes');
  return req.caller;
}

/** A caller that may act for any user: the AUTH_TOKEN, admin keys, development mode. */
const actsForAnyone = (caller: Caller): boolean => caller.userId === undefined || caller.admin;

export function consoleRoutes(deps: ConsoleRouteDeps): ConsoleRoutes {
  const { memory, chatMemory } = deps;
  return {
    whoami: (req, res) => {
      const caller = callerOf(req);
      res.json({ caller: caller.id, admin: actsForAnyone(caller), user_id: caller.userId ?? null });
    },

    users: async (req, res) => {
      const body = parse(usersBody, req);
      const caller = callerOf(req);
      const limit = body.limit ?? 50;
      const offset = body.offset ?? 0;
      const query = body.query === '' ? undefined : body.query;
      if (actsForAnyone(caller)) {
        const page = await memory.users({ query, limit, offset });
        res.json({ users: page.users, count: page.users.length, total: page.total });
        return;
      }
      // A bound caller's directory is its own user (when it has memories and matches the query).
      const own = caller.userId ?? '';
      const page = await memory.users({ query: own, limit: MAX_LIMIT, offset: 0 });
      const mine = page.users.filter((u) => u.user_id === own && (query === undefined || own.toLowerCase().includes(query.toLowerCase())));
      const users = mine.slice(offset, offset + limit);
      res.json({ users, count: users.length, total: mine.length });
    },

    update: async (req, res) => {
      const body = parse(updateBody, req);
      const scope = adminScope(callerOf(req), body);
      const updated = await memory.update(scope, body.memory_id, body.memory);
      res.json({ memories: [updated], count: 1 });
    },

    preview: async (req, res) => {
      const body = parse(previewBody, req);
      const scope = adminScope(callerOf(req), body);
      const recalled = await chatMemory.preview(scope, body.prompt);
      const block = buildMemoryBlock(recalled, deps.maxBlockChars);
      const injected = new Set(block?.included.map((m) => m.id));
      const { topK, threshold } = chatMemory.recallSettings;
      res.json({
        block: block?.text ?? null,
        injected: block?.count ?? 0,
        top_k: topK,
        threshold,
        max_chars: deps.maxBlockChars,
        memories: recalled.map((m) => ({ ...m, injected: injected.has(m.id) })),
      });
    },

    traces: (req, res) => {
      const body = parse(tracesBody, req);
      const caller = callerOf(req);
      let userId = body.user_id;
      if (!actsForAnyone(caller)) {
        if (userId !== undefined && userId !== caller.userId)
          throw new ForbiddenError('This caller may only access its own memories', 'user_id does not match the caller');
        userId = caller.userId;
      }
      const traces = deps.traces?.query({ userId, requestId: body.request_id, limit: body.limit ?? 100 }) ?? [];
      res.json({ traces, count: traces.length, enabled: deps.traces !== undefined });
    },

    exportMemories: async (req, res) => {
      const body = parse(exportBody, req);
      const scope = adminScope(callerOf(req), body);
      // The first page is read before anything is sent, so a memory outage is a clean 503.
      let page = await memory.list(scope, { limit: EXPORT_PAGE, offset: 0 });
      const file = `memories-${scope.userId.replace(/[^A-Za-z0-9._-]/g, '_')}.json`;
      res.setHeader('Content-Type', 'application/json; charset=utf-8');
      res.setHeader('Content-Disposition', `attachment; filename="${file}"`);
      res.setHeader('Cache-Control', 'no-store');
      const head = {
        user_id: scope.userId,
        ...(scope.agentId ? { agent_id: scope.agentId } : {}),
        ...(scope.runId ? { run_id: scope.runId } : {}),
        exported_at: new Date().toISOString(),
      };
      res.write(`${JSON.stringify(head).slice(0, -1)},"memories":[`);
      let count = 0;
      let offset = 0;
      try {
        for (;;) {
          for (const item of page) res.write(`${count++ === 0 ? '' : ','}\n${JSON.stringify(item)}`);
          if (page.length < EXPORT_PAGE) break;
          offset += page.length;
          page = await memory.list(scope, { limit: EXPORT_PAGE, offset });
        }
      } catch (err) {
        // Headers are out: end the document unfinished, so the download is visibly not valid JSON.
        deps.logger.warn('memory export failed part way; the download is cut short', {
          request_id: req.id,
          error: err instanceof Error ? err.message : String(err),
        });
        res.destroy(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      res.end(`\n],"count":${count}}\n`);
    },

    stats: async (req, res) => {
      const caller = callerOf(req);
      if (!actsForAnyone(caller))
        throw new ForbiddenError('The instance figures are for admin callers', 'This caller is bound to one user');
      const available = await memory.available().catch(() => false);
      const queue = deps.saveQueue?.();
      const recall = chatMemory.recallStats();
      res.json({
        memory: { backend: memory.backend, available },
        save_queue: queue ? { ...queue, dead: chatMemory.deadSaves, last_error: chatMemory.lastSaveError } : null,
        ...recall,
      });
    },
  };
}
