/**
 * Whose memories a request may touch (src/memory/scope.ts): a caller bound to a user acts only
 * for that user; the token and admin keys act for whoever they name; ids that could not name a
 * memory scope are refused (admin API) or mean "no memory" (chat path).
 */
import { BadRequestError, ForbiddenError } from '../../src/errors';
import type { Caller } from '../../src/http/context';
import { adminScope, chatScope, DEFAULT_CHAT_USER, memoryIdProblem } from '../../src/memory/scope';

const caller = (over: Partial<Caller> = {}): Caller => ({
  id: 'token',
  kind: 'token',
  userId: undefined,
  admin: true,
  limits: {},
  ...over,
});
const token = caller();
const alice = caller({ id: 'app-alice', kind: 'key', userId: 'alice', admin: false });
const ops = caller({ id: 'ops', kind: 'key', userId: undefined, admin: true });
const unboundKey = caller({ id: 'plain', kind: 'key', userId: undefined, admin: false });

describe('memoryIdProblem', () => {
  it('accepts ordinary ids up to 256 characters', () => {
    for (const id of ['alice', 'user-42', 'a@b.c', 'x'.repeat(256), 'é']) expect(memoryIdProblem(id)).toBeUndefined();
  });
  it('refuses too long ids, whitespace and the "*" wildcard', () => {
    expect(memoryIdProblem('x'.repeat(257))).toBe('must be at most 256 characters');
    for (const id of ['a b', 'a\tb', ' a', 'a\n']) expect(memoryIdProblem(id)).toBe('must not contain whitespace');
    expect(memoryIdProblem('*')).toBe('must not be "*"');
    expect(memoryIdProblem('a*')).toBeUndefined();
  });
});

describe('adminScope', () => {
  it('lets an unbound caller act for the user it names, with agent and run', () => {
    expect(adminScope(token, { user_id: 'bob', agent_id: 'ag', run_id: 'r1' })).toEqual({ userId: 'bob', agentId: 'ag', runId: 'r1' });
    expect(adminScope(ops, { user_id: 'bob' })).toEqual({ userId: 'bob', agentId: undefined, runId: undefined });
  });

  it('requires user_id from a caller without a user of its own', () => {
    expect(() => adminScope(token, {})).toThrow(BadRequestError);
    expect(() => adminScope(unboundKey, {})).toThrow('user_id is required');
  });

  it('gives a bound caller its own user when none is named, or when it names itself', () => {
    expect(adminScope(alice, {})).toMatchObject({ userId: 'alice' });
    expect(adminScope(alice, { user_id: 'alice', run_id: 'r' })).toEqual({ userId: 'alice', agentId: undefined, runId: 'r' });
  });

  it('refuses a bound caller naming another user (403)', () => {
    expect(() => adminScope(alice, { user_id: 'bob' })).toThrow(ForbiddenError);
  });

  it('refuses ids that cannot name a scope (400), naming the field', () => {
    expect(() => adminScope(token, { user_id: '*' })).toThrow('user_id must not be "*"');
    expect(() => adminScope(token, { user_id: 'a', agent_id: 'a b' })).toThrow('agent_id must not contain whitespace');
    expect(() => adminScope(token, { user_id: 'a', run_id: '*' })).toThrow(BadRequestError);
    // Checked before the binding: a bad id is the caller's mistake, whoever it names.
    expect(() => adminScope(alice, { user_id: 'a b' })).toThrow(BadRequestError);
  });
});

describe('chatScope', () => {
  it('takes X-Mem0-User-Id, else the body user, else "default", for an unbound caller', () => {
    expect(chatScope(token, { 'x-mem0-user-id': ' carol ' }, 'dave')).toEqual({ userId: 'carol', agentId: undefined, runId: undefined });
    expect(chatScope(token, {}, '  dave  ')).toMatchObject({ userId: 'dave' });
    expect(chatScope(token, { 'x-mem0-user-id': '   ' }, '')).toMatchObject({ userId: DEFAULT_CHAT_USER });
    expect(chatScope(token, {}, undefined)).toMatchObject({ userId: 'default' });
    expect(chatScope(token, { 'x-mem0-user-id': ['first', 'second'] }, undefined)).toMatchObject({ userId: 'first' });
  });

  it('reads agent and run from their headers', () => {
    expect(chatScope(token, { 'x-mem0-agent-id': 'coder', 'x-mem0-run-id': 'r-7' }, 'u')).toEqual({
      userId: 'u',
      agentId: 'coder',
      runId: 'r-7',
    });
  });

  it('keeps a bound caller on its own user, and refuses it naming another by header or body (403)', () => {
    expect(chatScope(alice, {}, undefined)).toMatchObject({ userId: 'alice' });
    expect(chatScope(alice, { 'x-mem0-user-id': 'alice' }, 'alice')).toMatchObject({ userId: 'alice' });
    expect(() => chatScope(alice, { 'x-mem0-user-id': 'bob' }, undefined)).toThrow(ForbiddenError);
    expect(() => chatScope(alice, {}, 'bob')).toThrow(ForbiddenError);
    expect(() => chatScope(alice, { 'x-mem0-user-id': 'alice' }, 'bob')).toThrow(ForbiddenError);
  });

  it('lets an admin key act for the user it names', () => {
    expect(chatScope(ops, { 'x-mem0-user-id': 'bob' }, undefined)).toMatchObject({ userId: 'bob' });
    expect(chatScope(ops, {}, undefined)).toMatchObject({ userId: 'default' });
  });

  it('refuses a bad X-Mem0-* header (400), but goes on without memory for a body user that cannot be a scope', () => {
    expect(() => chatScope(token, { 'x-mem0-user-id': '*' }, undefined)).toThrow(BadRequestError);
    expect(() => chatScope(token, { 'x-mem0-run-id': 'a b' }, 'u')).toThrow('X-Mem0-Run-Id must not contain whitespace');
    // OpenAI allows any string as `user`: "John Smith" is not refused, and not mixed into "default".
    expect(chatScope(token, {}, 'John Smith')).toBeUndefined();
    expect(chatScope(token, {}, '*')).toBeUndefined();
  });
});
