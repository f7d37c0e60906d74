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
 *
 * This file is the tap; the SSE decoder is sse.ts and the reading of each API's reply reply-extract.ts.
 */
import type { IncomingMessage } from 'node:http';
import zlib from 'node:zlib';
import {
  chatEvent,
  messagesEvent,
  parseJsonBody,
  responsesEvent,
  TextSink,
  type MessagesStream,
  type ParseState,
  type ReplyKind,
} from './reply-extract';
import { SseParser } from './sse';
import type { ForwardOptions } from './upstream';

export type { ReplyKind } from './reply-extract';

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
export function tapReply(
  kind: ReplyKind,
  onReply: (reply: CapturedReply) => void | Promise<void>,
): Required<Pick<ForwardOptions, 'onResponse' | 'beforeEnd'>> {
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
