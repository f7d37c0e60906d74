/**
 * `POST /v1/messages` (Anthropic's Messages API, Claude Code): the memory-augmented Anthropic route.
 *
 * The same steps as the OpenAI chat route, with Anthropic's rules: the memory user is the bound
 * caller's, else `X-Mem0-User-Id`, else `default` (never `metadata.user_id`); the search text is the
 * user's prompt, found through tool-loop turns; the block is spliced in after the request's last
 * block so every cached prefix stays byte-identical; and an exchange is saved once per turn, when
 * the reply ends it (`stop_reason: end_turn`), with the session in its metadata. Requests for
 * structured (JSON schema) output, such as Claude Code's session-title request, carry no memory.
 */
import { chatScope } from '../memory/scope';
import type { Handler } from '../http/pipeline';
import { exchangeId, writes, type ChatMemory } from '../memory/chat-memory';
import { appendMemoryBlock, isStructuredOutputRequest, messagesPromptText, messagesSessionId } from '../memory/messages-injection';
import { tapReply } from '../proxy/capture';
import type { ForwardOptions, Upstream } from '../proxy/upstream';
import { readMemoryRequest } from './chat';

export interface MessagesRouteOptions {
  upstream: Upstream;
  chatMemory: ChatMemory;
  maxBodyBytes: number;
  maxBlockChars: number;
}

export function messagesRoute(options: MessagesRouteOptions): Handler {
  const { upstream, chatMemory, maxBodyBytes } = options;
  return async (req, res, next) => {
    // Refused before any memory work when the request could not be forwarded anyway.
    const unusable = upstream.unusable();
    if (unusable) throw unusable;
    const { raw, body, mode, caller } = await readMemoryRequest(req, maxBodyBytes);
    // Checked even with memory off: a bound caller may not name another user.
    const scope = chatScope(caller, req.headers, undefined);
    const prompt = chatMemory.enabled && scope !== undefined && !isStructuredOutputRequest(body) ? messagesPromptText(body) : undefined;

    let forwardBody = raw;
    let injected = 0;
    if (scope !== undefined && prompt !== undefined && mode !== 'off') {
      const request = {
        requestId: req.id,
        callerId: caller.id,
        scope,
        mode,
        text: prompt,
        api: 'anthropic' as const,
        route: '/v1/messages',
        model: body['model'],
      };
      const memory = await chatMemory.injectInto(request, options.maxBlockChars, (block) => appendMemoryBlock(raw, body, block));
      forwardBody = memory.body ?? raw;
      injected = memory.injected.length;
    }
    res.setHeader('X-Mem0-Memories', String(injected));

    let forwardOptions: ForwardOptions = { body: forwardBody };
    if (scope !== undefined && prompt !== undefined && writes(mode)) {
      const sessionId = messagesSessionId(req.headers, body);
      const save = tapReply('messages', (reply) => {
        // Tool-loop steps (`tool_use`), cut-off replies (`max_tokens`) and pauses are not the end
        // of a turn: the turn is saved once, from the request whose reply ends it.
        if (reply.stopReason !== 'end_turn') return undefined;
        return chatMemory.remember({
          id: exchangeId(caller.id, scope, req.id),
          scope,
          userText: prompt,
          reply,
          metadata: {
            source: 'messages',
            model: reply.model ?? body['model'],
            request_id: req.id,
            ...(sessionId === undefined ? {} : { session_id: sessionId }),
          },
        });
      });
      forwardOptions = { ...forwardOptions, ...save };
    }
    upstream.forward(req, res, next, forwardOptions);
  };
}
