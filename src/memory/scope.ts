/**
 * Whose memories a request may touch (contract §2).
 *
 * A caller bound to a user acts only for that user: naming anyone else is 403. Unbound callers
 * (the `AUTH_TOKEN`, admin keys, development mode) act for whoever they name.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { BadRequestError, ForbiddenError } from '../errors';
import type { Caller } from '../http/context';
import { MAX_ID_CHARS } from './limits';
import type { MemoryScope } from './types';

export const DEFAULT_CHAT_USER = 'default';

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  const v = Array.isArray(value) ? value[0] : value;
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

/**
 * Why `value` cannot name a memory scope, or undefined when it can. The memory engine refuses ids
 * with whitespace, and `*` is a wildcard to vector stores: as a user id it would reach everyone.
 */
export function memoryIdProblem(value: string): string | undefined {
  if (value.length > MAX_ID_CHARS) return `must be at most ${MAX_ID_CHARS} characters`;
  return engineIdProblem(value);
}

/** What the engine itself cannot take as an id (the part of `memoryIdProblem` without the length). */
function engineIdProblem(value: string): string | undefined {
  if (/\s/.test(value)) return 'must not contain whitespace';
  if (value === '*') return 'must not be "*"';
  return undefined;
}

/**
 * What a memory service checks of a scope it is handed (whoever built it): mem0 OSS refuses ids
 * with whitespace, and vector stores read `*` as "any value", so either is a 400 here instead of a
 * failure inside the engine or a scope that reaches every user.
 */
export function checkScopeIds(scope: MemoryScope): void {
  for (const [name, value] of [
    ['user_id', scope.userId],
    ['agent_id', scope.agentId],
    ['run_id', scope.runId],
  ] as const) {
    const problem = value === undefined ? undefined : engineIdProblem(value);
    if (problem !== undefined) throw new BadRequestError(`${name} ${problem}`, [{ field: name, message: problem }]);
  }
}

function checkId(name: string, value: string | undefined): string | undefined {
  const problem = value === undefined ? undefined : memoryIdProblem(value);
  if (problem !== undefined) throw new BadRequestError(`${name} ${problem}`, [{ field: name, message: problem }]);
  return value;
}

function bound(caller: Caller, requested: string | undefined): string | undefined {
  if (caller.userId === undefined || caller.admin) return requested;
  if (requested !== undefined && requested !== caller.userId) {
    throw new ForbiddenError('This caller may only access its own memories', 'user_id does not match the caller');
  }
  return caller.userId;
}

/** The admin API's user: the bound one, else the body's `user_id` (required). */
export function adminScope(
  caller: Caller,
  body: { user_id?: string | undefined; agent_id?: string | undefined; run_id?: string | undefined },
): MemoryScope {
  const userId = bound(caller, checkId('user_id', body.user_id)) ?? caller.userId;
  if (userId === undefined) throw new BadRequestError('user_id is required', { user_id: 'Required' });
  return { userId, agentId: checkId('agent_id', body.agent_id), runId: checkId('run_id', body.run_id) };
}

/**
 * The chat path's user: the bound one; else `X-Mem0-User-Id`; else the body's `user` (or
 * `safety_identifier`); else `default`. A bound caller naming another user by header or body is refused (403); a bad
 * `X-Mem0-*` header is the caller's mistake (400).
 *
 * Returns undefined when the memory user would be the body's `user` and that cannot name a memory
 * scope (OpenAI allows any string there, e.g. "John Smith"): the chat then goes on without memory
 * rather than failing, or mixing that user into `default`.
 */
export function chatScope(caller: Caller, headers: IncomingHttpHeaders, bodyUser: string | undefined): MemoryScope | undefined {
  const fromHeader = checkId('X-Mem0-User-Id', header(headers, 'x-mem0-user-id'));
  const trimmed = bodyUser?.trim();
  const fromBody = trimmed === '' ? undefined : trimmed;
  if (caller.userId !== undefined && !caller.admin) {
    for (const requested of [fromHeader, fromBody]) bound(caller, requested);
  }
  const agentId = checkId('X-Mem0-Agent-Id', header(headers, 'x-mem0-agent-id'));
  const runId = checkId('X-Mem0-Run-Id', header(headers, 'x-mem0-run-id'));
  const userId = (caller.admin ? undefined : caller.userId) ?? fromHeader ?? fromBody ?? caller.userId ?? DEFAULT_CHAT_USER;
  if (memoryIdProblem(userId) !== undefined) return undefined;
  return { userId, agentId, runId };
}
