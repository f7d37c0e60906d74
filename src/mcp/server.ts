/**
 * The memory MCP server: four tools (`search_memories`, `list_memories`, `add_memory`,
 * `delete_memory`) and one resource template (`memory://{user_id}`) over the memory service.
 *
 * One server is built per HTTP request for one authenticated caller, so the caller reaches the
 * handlers as a closure and can never leak between requests. Whose memories a call touches is
 * decided by `adminScope`, exactly as on the admin API: a bound caller acts as its own user and
 * naming another is refused; unbound callers name the user.
 *
 * Failures never crash the session or become an HTTP error: a tool answers `isError: true` with a
 * message that starts with what went wrong (`forbidden:`, `not found:`, `invalid input:`,
 * `memory unavailable:`), and a resource read answers a JSON-RPC error with the same message.
 */
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { ErrorCode, McpError, type CallToolResult, type ReadResourceResult } from '@modelcontextprotocol/sdk/types.js';
// The SDK's types name 'zod/v3'; under this project's module resolution the root 'zod' typings are a
// separate declaration of the same classes, which TypeScript would not accept for a tool schema.
import { z } from 'zod/v3';
import { AppError, BadRequestError, ForbiddenError, MemoryUnavailableError, NotFoundError } from '../errors';
import type { Caller } from '../http/context';
import { adminScope } from '../memory/scope';
import type { Logger } from '../logger';
import {
  MAX_CONTENT_CHARS,
  MAX_ID_CHARS,
  MAX_LIMIT,
  MAX_MESSAGES,
  MAX_METADATA_CHARS,
  MAX_OFFSET,
  MAX_QUERY_CHARS,
  capResults,
  resultBody,
} from '../memory/limits';
import type { MemoryItem, MemoryService } from '../memory/types';

export const MCP_SERVER_NAME = 'mem0-proxy';
/** Memories a `memory://{user_id}` read lists at most (oldest first, as `/list`). */
export const RESOURCE_LIMIT = 1000;

export interface MemoryMcpOptions {
  memory: MemoryService;
  caller: Caller;
  logger: Logger;
  version: string;
  /** Defaults when a tool call gives no `limit` (the admin API's). */
  defaults: { searchLimit: number; listLimit: number };
  /** For log lines. */
  requestId?: string | undefined;
}

const userId = z
  .string()
  .trim()
  .min(1)
  .max(MAX_ID_CHARS)
  .optional()
  .describe(
    'Whose memories to use. Leave it out when your key belongs to one user (the call then acts for that user); a key bound to a user cannot name anyone else. Required for keys that serve many users.',
  );

const searchShape = {
  query: z
    .string()
    .trim()
    .min(1)
    .max(MAX_QUERY_CHARS)
    .describe('What to look for, in natural language, e.g. "favourite food" or "where does the user live".'),
  limit: z.number().int().min(1).max(MAX_LIMIT).optional().describe('Most memories to return, best match first (default 10).'),
  user_id: userId,
};
const listShape = {
  limit: z.number().int().min(1).max(MAX_LIMIT).optional().describe('Most memories to return (default 100).'),
  offset: z.number().int().min(0).max(MAX_OFFSET).optional().describe('How many to skip, for paging (default 0).'),
  user_id: userId,
};
const messageSchema = z.object({
  role: z.enum(['user', 'assistant', 'system']).describe('Who said it.'),
  content: z.string().min(1).max(MAX_CONTENT_CHARS).describe('What was said.'),
});
const addShape = {
  content: z
    .string()
    .trim()
    .min(1)
    .max(MAX_CONTENT_CHARS)
    .optional()
    .describe('A fact or note about the user to remember, e.g. "Prefers answers in Portuguese". Give this or `messages`, not both.'),
  messages: z
    .array(messageSchema)
    .min(1)
    .max(MAX_MESSAGES)
    .optional()
    .describe('A conversation to learn from; the memory engine extracts the facts worth keeping. Give this or `content`, not both.'),
  metadata: z
    .record(z.string(), z.unknown())
    .refine((m) => JSON.stringify(m).length <= MAX_METADATA_CHARS, 'metadata is too large')
    .optional()
    .describe('Optional key/value data stored with the memories (e.g. {"source":"chat"}).'),
  user_id: userId,
};
const deleteShape = {
  memory_id: z
    .string()
    .trim()
    .min(1)
    .max(MAX_ID_CHARS)
    .describe('The `id` of the memory to delete, as returned by search_memories or list_memories.'),
  user_id: userId,
};

/** A tool's JSON answer, as text (what every MCP client shows a model). */
function ok(value: unknown): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify(value) }] };
}

/** The message a model sees for a failure: what went wrong first, then why. */
function describeFailure(err: AppError): string {
  const detail = typeof err.details === 'string' ? err.details : err.message;
  if (err instanceof ForbiddenError) return `forbidden: ${detail}. This key may only use its own user's memories; leave user_id out.`;
  if (err instanceof NotFoundError) return `not found: ${detail}`;
  if (err instanceof BadRequestError) return `invalid input: ${err.message}`;
  if (err instanceof MemoryUnavailableError) return `memory unavailable: ${err.message}. Try again later.`;
  return `${err.title.toLowerCase()}: ${err.message}`;
}

export function createMemoryMcpServer(options: MemoryMcpOptions): McpServer {
  const { memory, caller, logger, defaults } = options;
  const server = new McpServer(
    { name: MCP_SERVER_NAME, version: options.version },
    {
      instructions:
        'Long-term memory about the user. Search it before answering questions that may depend on what you know about the user; add durable facts and preferences the user shares; delete memories the user asks you to forget.',
    },
  );

  /** Runs a tool body; every failure becomes a tool error, never a protocol error or an HTTP 500. */
  const run = async (tool: string, body: () => Promise<unknown>): Promise<CallToolResult> => {
    try {
      return ok(await body());
    } catch (err) {
      if (err instanceof AppError) {
        logger.debug('mcp tool refused', { request_id: options.requestId, caller: caller.id, tool, code: err.code });
        return { content: [{ type: 'text', text: describeFailure(err) }], isError: true };
      }
      logger.error('mcp tool failed', { request_id: options.requestId, caller: caller.id, tool, err });
      return { content: [{ type: 'text', text: 'internal error: the memory tool failed. Try again later.' }], isError: true };
    }
  };

  server.registerTool(
    'search_memories',
    {
      title: 'Search memories',
      description:
        "Search the user's long-term memories by meaning. Use it before answering anything that may depend on the user's preferences, history or personal facts. Returns {memories:[{id,memory,score,...}],count}, best match first.",
      inputSchema: searchShape,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    (args) =>
      run('search_memories', async () => {
        const memories = await memory.search(adminScope(caller, args), args.query, { limit: args.limit ?? defaults.searchLimit });
        return resultBody(memories);
      }),
  );

  server.registerTool(
    'list_memories',
    {
      title: 'List memories',
      description:
        "List the user's memories, oldest first, a page at a time (limit, offset). Returns {memories:[{id,memory,created_at,...}],count}.",
      inputSchema: listShape,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    (args) =>
      run('list_memories', async () => {
        const memories = await memory.list(adminScope(caller, args), { limit: args.limit ?? defaults.listLimit, offset: args.offset ?? 0 });
        return resultBody(memories);
      }),
  );

  server.registerTool(
    'add_memory',
    {
      title: 'Add memory',
      description:
        'Remember something about the user for future conversations: a durable fact, preference or decision. Give `content` (one note) or `messages` (a conversation to extract facts from). Returns the memories created or updated: {memories,count} (count can be 0 when nothing new was learnt).',
      inputSchema: addShape,
      annotations: { readOnlyHint: false, destructiveHint: false, openWorldHint: false },
    },
    (args) =>
      run('add_memory', async () => {
        if ((args.messages === undefined) === (args.content === undefined)) {
          throw new BadRequestError('give exactly one of content or messages');
        }
        const scope = adminScope(caller, args);
        const messages = args.messages ?? [{ role: 'user' as const, content: args.content ?? '' }];
        const memories = await memory.add(scope, { messages, metadata: args.metadata });
        return { memories, count: memories.length };
      }),
  );

  server.registerTool(
    'delete_memory',
    {
      title: 'Delete memory',
      description:
        'Delete one memory by its id, e.g. when the user asks you to forget something or a memory is wrong. Find the id with search_memories or list_memories first.',
      inputSchema: deleteShape,
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    (args) =>
      run('delete_memory', async () => {
        await memory.delete(adminScope(caller, args), args.memory_id);
        return { success: true, message: `Memory ${args.memory_id} deleted` };
      }),
  );

  server.registerResource(
    'memories',
    new ResourceTemplate('memory://{user_id}', {
      // Only a bound caller has a user to offer; nobody enumerates other users.
      list: () => {
        if (caller.userId === undefined || caller.admin) return { resources: [] };
        return { resources: [{ uri: resourceUri(caller.userId), name: `memories of ${caller.userId}`, mimeType: 'text/plain' }] };
      },
    }),
    {
      title: "A user's memories",
      description:
        "Every memory of one user (oldest first) as plain text, one per line with its id. A key bound to a user may read only that user's.",
      mimeType: 'text/plain',
    },
    async (uri, variables): Promise<ReadResourceResult> => {
      try {
        const raw = variables.user_id;
        const requested = decode(Array.isArray(raw) ? raw[0] : raw);
        const scope = adminScope(caller, { user_id: requested });
        const memories = capResults(await memory.list(scope, { limit: RESOURCE_LIMIT, offset: 0 })).memories;
        return { contents: [{ uri: uri.href, mimeType: 'text/plain', text: renderMemories(scope.userId, memories) }] };
      } catch (err) {
        if (err instanceof AppError) {
          const code = err instanceof MemoryUnavailableError ? ErrorCode.InternalError : ErrorCode.InvalidParams;
          throw new McpError(code, describeFailure(err));
        }
        logger.error('mcp resource read failed', { request_id: options.requestId, caller: caller.id, err });
        throw new McpError(ErrorCode.InternalError, 'internal error: reading the memories failed');
      }
    },
  );

  return server;
}

export function resourceUri(user: string): string {
  return `memory://${encodeURIComponent(user)}`;
}

function decode(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  try {
    return decodeURIComponent(value);
  } catch {
    throw new BadRequestError('user_id in the URI is not valid percent-encoding');
  }
}

/** The resource's text: a heading, then one line per memory. */
export function renderMemories(user: string, memories: readonly MemoryItem[]): string {
  if (memories.length === 0) return `No memories of user ${user}.\n`;
  const more = memories.length >= RESOURCE_LIMIT ? ` (the first ${RESOURCE_LIMIT})` : '';
  const lines = memories.map((m) => `- ${m.memory} (id: ${m.id}${m.created_at ? `, created ${m.created_at}` : ''})`);
  return `Memories of user ${user}, oldest first${more}:\n${lines.join('\n')}\n`;
}
