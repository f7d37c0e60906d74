/**
 * Captures the assistant's reply from an upstream response while it is piped to the client, so
 * the exchange can be saved as memory afterwards.
 *
 * It only taps: one 'data' listener next to the caller's pipe, no buffering of the client's bytes,
 * no pause, no backpressure of its own. What it keeps is bounded: the reply text (64 Ki UTF-16
 * units by default) and, for bodies that must be parsed whole (non-streamed JSON, compressed
 * bodies), the raw bytes up to a limit (4 MiB by default) past which it gives up.
 *
 * "Complete" is strict, because the contract says a truncated or failed completion is not saved:
 * - chat SSE: `data: [DONE]` was seen, or choice 0 reported a `finish_reason` and the body then
 *   ended cleanly (its terminating chunk arrived; 'end' is never emitted on an aborted
 *   response). Some OpenAI-compatible servers omit [DONE]; a cut connection never passes this.
 * - Responses SSE: a `response.completed` event (not `response.incomplete`/`failed`/`error`).
 * - Anthropic Messages SSE: a `message_stop` event (never after an `error` event); the reply
 *   carries the `stop_reason` from `message_delta`, and only text blocks count (not thinking,
 *   not tool inputs).
 * - JSON: the whole body arrived and parses (Responses: `status` is `completed` when present;
 *   Messages: a `message` object).
 * Anything malformed, an `error` event, a non-2xx status or an unknown content type gives
 * undefined; nothing here throws into the caller's stream.
 */
import type { IncomingMessage } from 'node:http';
import { StringDecoder } from 'node:string_decoder';
import zlib from 'node:zlib';
import type { ForwardOptions } from './upstream';

export type ReplyKind = 'chat' | 'responses' | 'messages';

export interface CapturedReply {
  /** The assistant's text (choice 0 for chat), possibly cut at the capture limit. */
  text: string;
  /** True when the reply has no text but tool/function calls: nothing worth remembering yet. */
  toolCallsOnly: boolean;
  /** The model the upstream says answered, when it says. */
  model?: string;
  /** Anthropic's `stop_reason` (`end_turn`, `tool_use`, `max_tokens`, …), when it says. */
  stopReason?: string;
}

export interface ReplyCapture {
  /** The captured reply once the response finished completely; undefined otherwise. Never throws. */
  result(): CapturedReply | undefined;
}

export interface CaptureOptions {
  /** Most reply text kept (UTF-16 code units); the rest is dropped, the reply still counts. */
  maxTextChars?: number;
  /** Most raw bytes kept for bodies parsed whole, and longest SSE line/event; past it: undefined. */
  maxBodyBytes?: number;
}

const DEFAULT_MAX_TEXT = 64 * 1024;
const DEFAULT_MAX_BODY = 4 * 1024 * 1024;

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Reply text accumulated up to a limit, cut on a code point boundary. */
class TextSink {
  private parts: string[] = [];
  private length = 0;
  constructor(private readonly max: number) {}

  add(piece: string): void {
    if (piece === '' || this.length >= this.max) return;
    if (this.length + piece.length <= this.max) {
      this.parts.push(piece);
      this.length += piece.length;
      return;
    }
    let end = this.max - this.length;
    const code = piece.charCodeAt(end - 1);
    if (code >= 0xd800 && code <= 0xdbff) end--;
    this.parts.push(piece.slice(0, end));
    // Cut once: nothing after the cut may be appended, or the text would skip a piece.
    this.length = this.max;
  }

  get text(): string {
    return this.parts.join('');
  }
}

/** What a parser knows once it has seen the body. */
interface ParseState {
  failed: boolean;
  complete: boolean;
  toolCalls: boolean;
  model: string | undefined;
  stopReason: string | undefined;
}

/** Turns SSE lines into events (WHATWG rules: LF, CRLF or CR endings, `:` comments, multi-line data). */
class SseParser {
  private pending = '';
  private data: string[] = [];
  private dataSize = 0;
  private event = '';
  private readonly decoder = new StringDecoder('utf8');

  constructor(
    private readonly maxBytes: number,
    private readonly onEvent: (event: string, data: string) => void,
    private readonly onOverflow: () => void,
  ) {}

  write(chunk: Buffer): void {
    this.feed(this.decoder.write(chunk), false);
  }

  /** The body ended: an event without its closing blank line is dropped, as the spec says. */
  end(): void {
    this.feed(this.decoder.end(), true);
  }

  private feed(text: string, final: boolean): void {
    let buffer = this.pending + text;
    let start = 0;
    // Next LF / CR positions, searched again only once passed (-1: none left), so a chunk of
    // many lines is scanned once rather than once per line.
    let lf = buffer.indexOf('\n');
    let cr = buffer.indexOf('\r');
    for (;;) {
      if (lf >= 0 && lf < start) lf = buffer.indexOf('\n', start);
      if (cr >= 0 && cr < start) cr = buffer.indexOf('\r', start);
      if (lf < 0 && cr < 0) break;
      let end: number;
      let next: number;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        // A CR at the very end may be the first half of a CRLF split across chunks.
        if (cr === buffer.length - 1 && !final) break;
        end = cr;
        next = buffer[cr + 1] === '\n' ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(buffer.slice(start, end));
      start = next;
    }
    buffer = buffer.slice(start);
    if (buffer.length > this.maxBytes) {
      this.onOverflow();
      buffer = '';
    }
    this.pending = final ? '' : buffer;
  }

  private line(line: string): void {
    if (line === '') {
      if (this.data.length > 0) this.onEvent(this.event, this.data.join('\n'));
      this.data = [];
      this.dataSize = 0;
      this.event = '';
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') {
      this.dataSize += value.length;
      if (this.dataSize > this.maxBytes) {
        this.onOverflow();
        this.data = [];
        this.dataSize = 0;
        return;
      }
      this.data.push(value);
    } else if (field === 'event') {
      this.event = value;
    }
  }
}

/** Text of an assistant content: a string, or the text of its text parts. */
function partsText(content: unknown, types: readonly string[]): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  let out = '';
  for (const part of content) {
    if (isObject(part) && typeof part['type'] === 'string' && types.includes(part['type']) && typeof part['text'] === 'string') out += part['text'];
  }
  return out;
}

function hasItems(value: unknown): boolean {
  return Array.isArray(value) && value.length > 0;
}

/** Choice 0 of a chat `choices` array: the one with `index: 0`, else the first. */
function firstChoice(choices: unknown[]): Json | undefined {
  const indexed = choices.find((c) => isObject(c) && c['index'] === 0);
  if (isObject(indexed)) return indexed;
  const first: unknown = choices[0];
  return isObject(first) && (first['index'] === undefined || first['index'] === 0) ? first : undefined;
}

/** Output items that are calls (function_call, custom_tool_call, computer_call, mcp_call, …). */
function isCallItem(item: unknown): boolean {
  return isObject(item) && typeof item['type'] === 'string' && item['type'].endsWith('_call');
}

/** Text and calls of a Responses `output` array. */
function responsesOutput(response: Json, sink: TextSink): { text: boolean; calls: boolean } {
  const output = response['output'];
  let calls = false;
  let text = false;
  if (Array.isArray(output)) {
    for (const item of output) {
      if (isCallItem(item)) calls = true;
      if (isObject(item) && item['type'] === 'message') {
        const t = partsText(item['content'], ['output_text']);
        if (t !== '') {
          sink.add(t);
          text = true;
        }
      }
    }
  }
  if (!text && typeof response['output_text'] === 'string' && response['output_text'] !== '') {
    sink.add(response['output_text']);
    text = true;
  }
  return { text, calls };
}

/** Parses a whole chat completion or Responses object into `state` and `sink`. */
function parseJsonBody(kind: ReplyKind, body: string, state: ParseState, sink: TextSink): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    state.failed = true;
    return;
  }
  if (!isObject(parsed) || (parsed['error'] !== undefined && parsed['error'] !== null)) {
    state.failed = true;
    return;
  }
  if (typeof parsed['model'] === 'string') state.model = parsed['model'];
  if (kind === 'messages') {
    if (parsed['type'] !== 'message' || !Array.isArray(parsed['content'])) {
      state.failed = true;
      return;
    }
    for (const block of parsed['content']) {
      if (!isObject(block)) continue;
      if (block['type'] === 'text' && typeof block['text'] === 'string') addTextBlock(sink, block['text']);
      else if (block['type'] === 'tool_use' || block['type'] === 'server_tool_use') state.toolCalls = true;
    }
    if (typeof parsed['stop_reason'] === 'string') state.stopReason = parsed['stop_reason'];
  } else if (kind === 'chat') {
    const choices = parsed['choices'];
    const choice = Array.isArray(choices) ? firstChoice(choices) : undefined;
    const message = choice?.['message'];
    if (!isObject(message)) {
      state.failed = true;
      return;
    }
    sink.add(partsText(message['content'], ['text', 'output_text']));
    state.toolCalls = hasItems(message['tool_calls']) || isObject(message['function_call']);
  } else {
    const status = parsed['status'];
    if (status !== undefined && status !== 'completed') {
      state.failed = true;
      return;
    }
    state.toolCalls = responsesOutput(parsed, sink).calls;
  }
  state.complete = true;
}

/** Handles one chat SSE event. */
function chatEvent(data: string, state: ParseState, sink: TextSink, finish: { choice0: boolean; done: boolean }): void {
  if (finish.done) return;
  if (data.trim() === '[DONE]') {
    finish.done = true;
    return;
  }
  let chunk: unknown;
  try {
    chunk = JSON.parse(data);
  } catch {
    state.failed = true;
    return;
  }
  if (!isObject(chunk) || (chunk['error'] !== undefined && chunk['error'] !== null)) {
    state.failed = true;
    return;
  }
  if (state.model === undefined && typeof chunk['model'] === 'string') state.model = chunk['model'];
  const choices = chunk['choices'];
  if (!Array.isArray(choices)) return;
  for (const choice of choices) {
    // Only choice 0: with n > 1 the first answer is the one remembered.
    if (!isObject(choice) || (choice['index'] !== 0 && !(choice['index'] === undefined && choices.length === 1))) continue;
    const delta = choice['delta'];
    if (isObject(delta)) {
      if (typeof delta['content'] === 'string') sink.add(delta['content']);
      else if (Array.isArray(delta['content'])) sink.add(partsText(delta['content'], ['text', 'output_text']));
      if (hasItems(delta['tool_calls']) || isObject(delta['function_call'])) state.toolCalls = true;
    }
    if (typeof choice['finish_reason'] === 'string' && choice['finish_reason'] !== '') finish.choice0 = true;
  }
}

/** An SSE event's JSON object; anything else fails the capture (undefined). */
function eventPayload(data: string, state: ParseState): Json | undefined {
  let payload: unknown;
  try {
    payload = JSON.parse(data);
  } catch {
    payload = undefined;
  }
  if (isObject(payload)) return payload;
  state.failed = true;
  return undefined;
}

/** Handles one Responses SSE event (its `type` field, else the `event:` name). */
function responsesEvent(eventName: string, data: string, state: ParseState, sink: TextSink, seenDelta: { text: boolean }): void {
  if (state.complete) return;
  const payload = eventPayload(data, state);
  if (!payload) return;
  const type = typeof payload['type'] === 'string' ? payload['type'] : eventName;
  switch (type) {
    case 'response.output_text.delta':
      if (typeof payload['delta'] === 'string') {
        sink.add(payload['delta']);
        if (payload['delta'] !== '') seenDelta.text = true;
      }
      return;
    case 'response.output_item.added':
    case 'response.output_item.done':
      if (isCallItem(payload['item'])) state.toolCalls = true;
      return;
    case 'response.completed': {
      const response = payload['response'];
      if (isObject(response)) {
        if (typeof response['model'] === 'string') state.model = response['model'];
        // Servers that send no deltas still put the text in the final object.
        const out = responsesOutput(response, seenDelta.text ? new TextSink(0) : sink);
        if (out.calls) state.toolCalls = true;
      }
      state.complete = true;
      return;
    }
    case 'response.created':
    case 'response.in_progress': {
      const response = payload['response'];
      if (isObject(response) && typeof response['model'] === 'string') state.model = response['model'];
      return;
    }
    case 'response.failed':
    case 'response.incomplete':
    case 'error':
      state.failed = true;
      return;
    default:
      return;
  }
}

/** Several text blocks of one Anthropic reply are kept apart by a blank line. */
function addTextBlock(sink: TextSink, text: string): void {
  if (text === '') return;
  if (sink.text !== '') sink.add('\n\n');
  sink.add(text);
}

/** Per-stream state of an Anthropic Messages SSE reply. */
interface MessagesStream {
  /** Block type by content block index. */
  blocks: Map<number, string>;
  /** Whether the current text block has added text yet (for the separator between blocks). */
  textStarted: boolean;
}

/** Handles one Anthropic Messages SSE event (its `type` field, else the `event:` name). */
function messagesEvent(eventName: string, data: string, state: ParseState, sink: TextSink, stream: MessagesStream): void {
  if (state.complete) return;
  const payload = eventPayload(data, state);
  if (!payload) return;
  const type = typeof payload['type'] === 'string' ? payload['type'] : eventName;
  switch (type) {
    case 'message_start': {
      const message = payload['message'];
      if (isObject(message) && typeof message['model'] === 'string') state.model = message['model'];
      return;
    }
    case 'content_block_start': {
      const block = payload['content_block'];
      const index = typeof payload['index'] === 'number' ? payload['index'] : -1;
      const blockType = isObject(block) && typeof block['type'] === 'string' ? block['type'] : '';
      stream.blocks.set(index, blockType);
      stream.textStarted = false;
      if (blockType === 'tool_use' || blockType === 'server_tool_use') state.toolCalls = true;
      if (blockType === 'text' && isObject(block) && typeof block['text'] === 'string' && block['text'] !== '') {
        addTextBlock(sink, block['text']);
        stream.textStarted = true;
      }
      return;
    }
    case 'content_block_delta': {
      const delta = payload['delta'];
      const index = typeof payload['index'] === 'number' ? payload['index'] : -1;
      if (!isObject(delta) || delta['type'] !== 'text_delta' || stream.blocks.get(index) !== 'text') return;
      const text = delta['text'];
      if (typeof text !== 'string' || text === '') return;
      if (!stream.textStarted) {
        addTextBlock(sink, text);
        stream.textStarted = true;
      } else sink.add(text);
      return;
    }
    case 'message_delta': {
      const delta = payload['delta'];
      if (isObject(delta) && typeof delta['stop_reason'] === 'string') state.stopReason = delta['stop_reason'];
      return;
    }
    case 'message_stop':
      state.complete = true;
      return;
    case 'error':
      state.failed = true;
      return;
    default:
      return;
  }
}

function contentType(res: IncomingMessage): 'json' | 'sse' | undefined {
  const raw = res.headers['content-type'];
  const value = (Array.isArray(raw) ? raw[0] : raw)?.split(';')[0]?.trim().toLowerCase();
  if (value === 'text/event-stream') return 'sse';
  if (value === 'application/json' || value?.endsWith('+json')) return 'json';
  return undefined;
}

/** Decompresses a whole body (bounded), or undefined for an unknown coding or a bad stream. */
function decode(raw: Buffer, coding: string, maxBytes: number): Buffer | undefined {
  const options = { maxOutputLength: maxBytes };
  try {
    if (coding === 'gzip' || coding === 'x-gzip') return zlib.gunzipSync(raw, options);
    if (coding === 'deflate') return zlib.inflateSync(raw, options);
    if (coding === 'br') return zlib.brotliDecompressSync(raw, options);
  } catch {
    return undefined;
  }
  return undefined;
}

const NEVER: ReplyCapture = { result: () => undefined };

/**
 * Taps `upstreamRes` (call before or right after the caller pipes it; do not wait a tick) and
 * returns a handle whose `result()` gives the reply after the response ended. A non-2xx status or
 * a content type other than JSON or SSE is not tapped at all.
 */
export function createReplyCapture(kind: ReplyKind, upstreamRes: IncomingMessage, options: CaptureOptions = {}): ReplyCapture {
  const status = upstreamRes.statusCode ?? 0;
  const type = contentType(upstreamRes);
  if (status < 200 || status >= 300 || type === undefined) return NEVER;
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY;
  const sink = new TextSink(options.maxTextChars ?? DEFAULT_MAX_TEXT);
  const state: ParseState = { failed: false, complete: false, toolCalls: false, model: undefined, stopReason: undefined };
  const chatFinish = { choice0: false, done: false };
  const seenDelta = { text: false };
  const messagesStream: MessagesStream = { blocks: new Map(), textStarted: false };
  let ended = false;

  const rawCoding = upstreamRes.headers['content-encoding'];
  const coding = (Array.isArray(rawCoding) ? rawCoding.join(',') : (rawCoding ?? '')).trim().toLowerCase();
  const encoded = coding !== '' && coding !== 'identity';
  // Bodies we can only read whole: JSON, and anything compressed (a zlib stream would answer
  // asynchronously, after the caller asks for the result).
  const whole = type === 'json' || encoded;
  const rawChunks: Buffer[] = [];
  let rawSize = 0;

  const sse = new SseParser(
    maxBody,
    (event, data) => {
      if (kind === 'chat') chatEvent(data, state, sink, chatFinish);
      else if (kind === 'responses') responsesEvent(event, data, state, sink, seenDelta);
      else messagesEvent(event, data, state, sink, messagesStream);
    },
    () => {
      state.failed = true;
    },
  );

  const onData = (chunk: Buffer | string): void => {
    if (state.failed) {
      // Nothing more to learn: stop looking at the bytes (the caller's pipe is unaffected).
      upstreamRes.removeListener('data', onData);
      return;
    }
    try {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (whole) {
        rawSize += buf.length;
        if (rawSize > maxBody) {
          state.failed = true;
          rawChunks.length = 0;
          return;
        }
        rawChunks.push(buf);
      } else {
        sse.write(buf);
      }
    } catch {
      state.failed = true;
    }
  };
  upstreamRes.on('data', onData);
  upstreamRes.once('end', () => {
    ended = true;
  });
  const fail = (): void => {
    state.failed = true;
  };
  upstreamRes.on('aborted', fail);
  upstreamRes.on('error', fail);

  let finalized = false;
  const finalize = (): void => {
    if (finalized) return;
    finalized = true;
    upstreamRes.removeListener('data', onData);
    if (state.failed) return;
    if (whole) {
      let body: Buffer | undefined = Buffer.concat(rawChunks);
      rawChunks.length = 0;
      if (encoded) body = decode(body, coding, maxBody);
      if (body === undefined) {
        state.failed = true;
        return;
      }
      if (type === 'json') {
        parseJsonBody(kind, body.toString('utf8'), state, sink);
        return;
      }
      sse.write(body);
    }
    if (ended) sse.end();
  };

  return {
    result(): CapturedReply | undefined {
      try {
        // After the end the state no longer changes; before it a whole body is not readable yet
        // and a stream can only be judged by what it has said so far ([DONE], response.completed).
        if (ended) finalize();
        else if (whole) return undefined;
        if (state.failed) return undefined;
        const complete = type === 'json' || kind !== 'chat' ? state.complete : chatFinish.done || (chatFinish.choice0 && ended);
        if (!complete) return undefined;
        const text = sink.text;
        const reply: CapturedReply = { text, toolCallsOnly: text.trim() === '' && state.toolCalls };
        if (state.model !== undefined) reply.model = state.model;
        if (state.stopReason !== undefined) reply.stopReason = state.stopReason;
        return reply;
      } catch {
        return undefined;
      }
    },
  };
}

/**
 * Forwarding hooks that tap the reply and hand it to `onReply` once the upstream response ended,
 * before the client's response is ended (which waits for the promise `onReply` returns): only a
 * complete 2xx response whose reply could be captured whole (aborted, failed or truncated ones
 * never are; a client that goes away stops the upstream response, so it never ends).
 */
export function tapReply(kind: ReplyKind, onReply: (reply: CapturedReply) => void | Promise<void>): Required<Pick<ForwardOptions, 'onResponse' | 'beforeEnd'>> {
  let capture: ReplyCapture | undefined;
  let status = 0;
  return {
    onResponse: (upstreamRes) => {
      status = upstreamRes.statusCode ?? 0;
      capture = createReplyCapture(kind, upstreamRes);
    },
    beforeEnd: () => {
      if (status < 200 || status >= 300) return undefined;
      const reply = capture?.result();
      return reply ? onReply(reply) : undefined;
    },
  };
}
