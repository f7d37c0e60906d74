/**
 * Memory on Anthropic's Messages API (`/v1/messages`, Claude Code): which text to search memories
 * for, where the memory block goes, and what a session is called.
 *
 * Anthropic caches a request's prefix (tools, then system, then messages) up to each block that
 * carries `cache_control`. The block therefore goes after everything: one text block appended to
 * the content of the last message, whatever its role (Claude Code ends its requests with a
 * `system` message). It is spliced into the body's bytes, so every byte before it (every cached
 * prefix) is exactly what the client sent; `system`, `tools` and the breakpoints are never
 * touched, and the block carries no breakpoint of its own.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { documentSpan, elementSpans, memberSpan } from '../util/json-spans';

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Claude Code's context blocks (`<system-reminder>…</system-reminder>`): not the user's words. */
const SYSTEM_REMINDER = /<system-reminder>[\s\S]*?(?:<\/system-reminder>|$)/g;

/** What a person wrote in a text: the text without system reminders; blank → undefined. */
function humanText(text: string): string | undefined {
  const stripped = text.includes('<system-reminder>') ? text.replace(SYSTEM_REMINDER, '') : text;
  return stripped.trim() === '' ? undefined : stripped.trim();
}

/**
 * The human text of a user message's content: a string, or its `text` blocks (tool results,
 * images and documents are not the user's words), reminders removed, joined with a newline.
 */
function userContentText(content: unknown): string | undefined {
  if (typeof content === 'string') return humanText(content);
  if (!Array.isArray(content)) return undefined;
  const parts: string[] = [];
  for (const block of content) {
    if (!isObject(block) || block['type'] !== 'text' || typeof block['text'] !== 'string') continue;
    const text = humanText(block['text']);
    if (text !== undefined) parts.push(text);
  }
  return parts.length > 0 ? parts.join('\n') : undefined;
}

/**
 * The user's prompt: the human text of the last user message that has any. Tool-loop requests end
 * with a user turn of `tool_result` blocks after the assistant's `tool_use`; the search goes on
 * through them to the prompt that started the turn, so every request of a turn recalls the same.
 */
export function messagesPromptText(body: Json): string | undefined {
  const messages = body['messages'];
  if (!Array.isArray(messages)) return undefined;
  for (let i = messages.length - 1; i >= 0; i--) {
    const message: unknown = messages[i];
    if (!isObject(message) || message['role'] !== 'user') continue;
    const text = userContentText(message['content']);
    if (text !== undefined) return text;
  }
  return undefined;
}

/**
 * `raw` (the request as sent, `body` its parse) with a text block holding `block` appended to the
 * last message's content, every other byte unchanged: a string content becomes
 * `[{"type":"text","text":<the same string>}, <block>]`, an array gets the block as its last
 * element. Undefined when there is nowhere to put it: no messages, or the last message is the
 * assistant's (a prefill the model continues: text added there would read as its own words).
 */
export function appendMemoryBlock(raw: Buffer, body: Json, block: string): Buffer | undefined {
  const messages = body['messages'];
  if (!Array.isArray(messages) || messages.length === 0) return undefined;
  const last: unknown = messages[messages.length - 1];
  if (!isObject(last) || last['role'] === 'assistant') return undefined;
  const content = last['content'];
  if (typeof content !== 'string' && !Array.isArray(content)) return undefined;

  const doc = documentSpan(raw);
  const messagesSpan = doc && memberSpan(raw, doc, 'messages');
  const elements = messagesSpan && elementSpans(raw, messagesSpan);
  const lastSpan = elements?.[elements.length - 1];
  const contentSpan = lastSpan && memberSpan(raw, lastSpan, 'content');
  // The scan must agree with the parse (it always does for text JSON.parse accepted).
  if (!contentSpan || elements.length !== messages.length) return undefined;
  const blockJson = `{"type":"text","text":${JSON.stringify(block)}}`;

  if (typeof content === 'string') {
    if (raw[contentSpan.start] !== 0x22) return undefined;
    const original = raw.subarray(contentSpan.start, contentSpan.end);
    return Buffer.concat([
      raw.subarray(0, contentSpan.start),
      Buffer.from('[{"type":"text","text":'),
      original,
      Buffer.from(`},${blockJson}]`),
      raw.subarray(contentSpan.end),
    ]);
  }
  const close = contentSpan.end - 1;
  if (raw[contentSpan.start] !== 0x5b || raw[close] !== 0x5d) return undefined;
  const separator = content.length === 0 ? '' : ',';
  return Buffer.concat([raw.subarray(0, close), Buffer.from(`${separator}${blockJson}`), raw.subarray(close)]);
}

/**
 * Whether a request asks for output in a JSON schema (`output_config.format`, or the older
 * top-level `output_format`): a machine task such as Claude Code's session-title request, whose
 * "prompt" is an instruction wrapped around the user's words. It gets no memories (they would
 * change a structured answer) and is not saved (its prompt is not the user's).
 */
export function isStructuredOutputRequest(body: Json): boolean {
  const config = body['output_config'];
  return (
    (isObject(config) && config['format'] !== undefined && config['format'] !== null) ||
    (body['output_format'] !== undefined && body['output_format'] !== null)
  );
}

const MAX_SESSION_ID = 256;

function usableId(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const trimmed = value.trim();
  // Printable ASCII only: it ends up in stored metadata and in the console.
  return trimmed !== '' && trimmed.length <= MAX_SESSION_ID && /^[\x21-\x7e]+$/.test(trimmed) ? trimmed : undefined;
}

/**
 * The client's session, for the saved memory's metadata: Claude Code's `X-Claude-Code-Session-Id`
 * header, else the `session_id` in `metadata.user_id` (Claude Code sends a JSON string there).
 * Never a memory user: whose memories these are comes from the caller (contract §2).
 */
export function messagesSessionId(headers: IncomingHttpHeaders, body: Json): string | undefined {
  const header = headers['x-claude-code-session-id'];
  const fromHeader = usableId(Array.isArray(header) ? header[0] : header);
  if (fromHeader !== undefined) return fromHeader;
  const metadata = body['metadata'];
  const userId = isObject(metadata) ? metadata['user_id'] : undefined;
  if (typeof userId !== 'string' || !userId.startsWith('{')) return undefined;
  try {
    const parsed: unknown = JSON.parse(userId);
    return isObject(parsed) ? usableId(parsed['session_id']) : undefined;
  } catch {
    return undefined;
  }
}
