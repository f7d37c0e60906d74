/**
 * `POST /v1/chat/completions` and `POST /v1/responses`: the memory-augmented routes.
 *
 * Read the body (within the limit; it must be a JSON object) → find the memory user → recall the
 * user's memories for the last user text (through tool results), within the time budget → inject
 * them as one block → forward → tap the reply as it streams back → queue the completed exchange
 * for saving (once per turn: not for a reply of tool calls only). With no
 * memory found (or a body holding an integer JavaScript would round), the body is forwarded byte
 * for byte as the caller sent it.
 */
import type { IncomingMessage } from 'node:http';
import { BadRequestError } from '../errors';
import type { Caller } from '../http/context';
import { chatScope } from '../memory/scope';
import type { Handler } from '../http/pipeline';
import { readBody, requireJson } from '../http/read-body';
import type { InjectionPlacement } from '../config';
import { exchangeId, parseMemoryMode, writes, type ChatMemory, type MemoryMode } from '../memory/chat-memory';
import { injectChat, injectResponses, lastUserInputText, lastUserText } from '../memory/injection';
import { hasUnsafeInteger } from '../memory/unsafe-numbers';
import { nestsDeeperThan } from '../util/json-spans';
import { tapReply } from '../proxy/capture';
import type { ForwardOptions, Upstream } from '../proxy/upstream';

/** Deepest nesting of objects and arrays a chat body may have (real ones stay under 20). */
export const MAX_BODY_DEPTH = 400;

/** Parses a chat body; anything but a JSON object (nesting at most `MAX_BODY_DEPTH`) is the caller's mistake (400). */
export function parseChatBody(raw: Buffer): Record<string, unknown> {
  if (raw.length === 0) throw new BadRequestError('Request body must be a JSON object');
  if (nestsDeeperThan(raw, MAX_BODY_DEPTH)) throw new BadRequestError(`Request body nests deeper than ${MAX_BODY_DEPTH} levels`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new BadRequestError('Request body is not valid JSON');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new BadRequestError('Request body must be a JSON object');
  return parsed as Record<string, unknown>;
}

export interface MemoryRouteOptions {
  kind: 'chat' | 'responses';
  upstream: Upstream;
  chatMemory: ChatMemory;
  maxBodyBytes: number;
  placement: InjectionPlacement;
  maxBlockChars: number;
}

/** What every memory route reads first: the body as sent and parsed, the memory mode, the caller. */
export async function readMemoryRequest(
  req: IncomingMessage,
  maxBodyBytes: number,
): Promise<{ raw: Buffer; body: Record<string, unknown>; mode: MemoryMode; caller: Caller }> {
  requireJson(req);
  const raw = await readBody(req, maxBodyBytes);
  const body = parseChatBody(raw);
  const mode = parseMemoryMode(req.headers['x-mem0-memory']);
  const caller = req.caller;
  if (!caller) throw new Error('authenticate must run before the memory routes');
  return { raw, body, mode, caller };
}

export function memoryChatRoute(options: MemoryRouteOptions): Handler {
  const { kind, upstream, chatMemory, maxBodyBytes } = options;
  return async (req, res, next) => {
    const { raw, body, mode, caller } = await readMemoryRequest(req, maxBodyBytes);
    // OpenAI's end-user id: `user`, or `safety_identifier`, which newer clients send in its place.
    const bodyUser = [body['user'], body['safety_identifier']].find((v): v is string => typeof v === 'string' && v.trim() !== '');
    // Checked even with memory off: a bound caller may not name another user anywhere.
    const scope = chatScope(caller, req.headers, bodyUser);
    // Through tool results: every request of a tool-using turn recalls for the user's words.
    const through = { throughToolResults: true };
    const userText =
      chatMemory.enabled && scope !== undefined
        ? kind === 'chat'
          ? lastUserText(body, through)
          : lastUserInputText(body, through)
        : undefined;

    let forwardBody = raw;
    let injected = 0;
    if (scope !== undefined && userText !== undefined && mode !== 'off') {
      const route = kind === 'chat' ? '/v1/chat/completions' : '/v1/responses';
      const request = {
        requestId: req.id,
        callerId: caller.id,
        scope,
        mode,
        text: userText,
        api: 'openai' as const,
        route,
        model: body['model'],
      };
      const memory = await chatMemory.injectInto(request, options.maxBlockChars, (block) => {
        // Re-serialising would round an integer beyond 2^53 the caller sent: forward such a body
        // as sent, without memories, rather than change one of its values.
        if (hasUnsafeInteger(raw.toString('utf8'))) return undefined;
        return Buffer.from(JSON.stringify(kind === 'chat' ? injectChat(body, block, options.placement) : injectResponses(body, block)));
      });
      forwardBody = memory.body ?? raw;
      injected = memory.injected.length;
    }
    res.setHeader('X-Mem0-Memories', String(injected));

    let forwardOptions: ForwardOptions = { body: forwardBody };
    if (scope !== undefined && userText !== undefined && writes(mode)) {
      const source = kind === 'chat' ? 'chat.completions' : 'responses';
      const save = tapReply(kind, (reply) => {
        // A reply of tool calls only does not end the turn: the request that carries the tool
        // results gets the final answer, and saves it with the same user text.
        if (reply.toolCallsOnly) return undefined;
        return chatMemory.remember({
          id: exchangeId(caller.id, scope, req.id),
          scope,
          userText,
          reply,
          metadata: { source, model: reply.model ?? body['model'], request_id: req.id },
        });
      });
      forwardOptions = { ...forwardOptions, ...save };
    }
    upstream.forward(req, res, next, forwardOptions);
  };
}
