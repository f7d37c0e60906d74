/**
 * A fake Anthropic API upstream: a real `node:http` server on 127.0.0.1 (port 0) that speaks the
 * Messages API wire format closely enough for the official Anthropic SDK (devDependency alias
 * `anthropic-sdk-v1`, @anthropic-ai/sdk 1.16.0) and for raw Claude Code-shaped traffic. It exists so
 * the proxy's Anthropic pass-through can be tested end to end without the internet, including the
 * one property that matters most for Claude Code users: that Anthropic's prompt cache keeps hitting.
 *
 * `fake.url` is the base URL WITHOUT `/v1` (the Anthropic SDK's `baseURL` convention).
 *
 * Endpoints:
 *   POST /v1/messages[?…]        `message` JSON, or SSE when `stream: true`: message_start, ping, per
 *                                block content_block_start / *_delta… / content_block_stop,
 *                                message_delta, message_stop (`event: <name>\ndata: <json>\n\n`).
 *                                Default reply: one text block "Answer: <prompt>" (the prompt is the
 *                                last user text block that does not start with `<system-reminder>`).
 *   POST /v1/messages/count_tokens  `{"input_tokens": ceil(JSON length / 4)}`.
 *   GET  /v1/models[/:id]        Anthropic's list / model object.
 *   anything else                404 not_found_error.
 * Every request needs an `anthropic-version` header (else 400) and, when `apiKey` is configured,
 * `x-api-key: <key>` or `Authorization: Bearer <key>` (else 401). Errors always use Anthropic's shape
 * `{"type":"error","error":{"type","message"},"request_id"}`; every response has a `request-id` header.
 *
 * Scripted replies: `fake.setNext(reply, {times, path})`. Without `path`, the content kinds ('text',
 * 'tool_use', 'stream-error') only match POST /v1/messages while 'error' / 'hang' / 'reset' match
 * any path. Auth / version failures do not consume a script. 'stream-error' on a non-streamed
 * request answers with the HTTP status of its error type (overloaded_error → 529, api_error → 500…).
 * 'hang' without `afterEvents` never sends headers; with it (streamed) it sends that many events and
 * stalls until the client goes away. 'reset' sends headers (+ `afterEvents` events, default 0; half
 * the JSON body when not streamed) then RSTs the socket.
 *
 * Prompt cache simulation (`fake.cache`): a request is flattened into ordered blocks (each tool
 * definition, each system block, each message content block with its role; a string content is one
 * text block; the block's own `cache_control` is stripped and keys are sorted, since Anthropic
 * matches content, not bytes). Every block carrying `cache_control` is a breakpoint whose prefix
 * (model + blocks up to it) is written to the cache. On a request, each breakpoint looks back up to
 * 20 block boundaries (Anthropic's documented lookback) for a prefix already cached; the longest hit
 * is `cache_read_input_tokens`, the rest of the last breakpoint's prefix is
 * `cache_creation_input_tokens`, the remainder `input_tokens` (tokens ≈ ceil(chars / 4)). More than 4
 * breakpoints is a 400, as on the real API. Usage is recorded per request (`rec.usage`) and in
 * `fake.cache.lastUsage`.
 *
 * What we found about the SDK (1.16.0) while writing this:
 *   - `apiKey` is sent as `Authorization: Bearer <key>`, NOT `x-api-key`. To send `x-api-key`, pass
 *     `new Anthropic({ apiKey: null, authToken: null, defaultHeaders: { 'x-api-key': key }, baseURL,
 *     maxRetries: 0 })`; `validateHeaders` accepts a request that already has `x-api-key`. Caveat:
 *     with both credentials null the SDK falls back to its "default credential chain", which reads
 *     `<config dir>/configs/<profile>.json` (ANTHROPIC_CONFIG_DIR, XDG_CONFIG_HOME/anthropic or
 *     ~/.config/anthropic) and ANTHROPIC_PROFILE / ANTHROPIC_FEDERATION_RULE_ID…; a developer with a
 *     profile there would also get `Authorization: Bearer <their token>`. For hermetic tests either
 *     point ANTHROPIC_CONFIG_DIR at an empty directory or subclass Anthropic and override the
 *     protected `_shouldResolveDefaultCredentials()` to return false (what our tests do).
 *   - The SDK sends `anthropic-version: 2026-10-21` by default.
 *   - An SSE `event: error` surfaces as a plain `Anthropic.APIError` with `status` undefined,
 *     `type` = the error's type (e.g. 'overloaded_error') and `error` = the parsed event body; it is
 *     thrown from the stream iterator (or rejects `MessageStream.finalMessage()`), not from `create`.
 *   - A socket reset after the headers is NOT wrapped by the SDK: it surfaces as undici's own
 *     `TypeError: terminated` (cause: ECONNRESET), from the stream iterator or from `create`. A
 *     request that never gets headers ends in `APIConnectionTimeoutError` (per-request `timeout`).
 *   - Non-streamed `messages.create` throws client-side (before any request) when `max_tokens` implies
 *     a > 10 minute response (max_tokens > 21,333): use streams for Claude Code-sized max_tokens.
 *   - HTTP status → class: 400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
 *     404 NotFoundError, 429 RateLimitError, 500 InternalServerError (any unmapped ≥ 500),
 *     503 ServiceUnavailableError, 529 OverloadedError (core/error.js STATUS_ERROR_CLASSES).
 */
import * as crypto from 'node:crypto';
import type * as http from 'node:http';
import {
  Exchange as BaseExchange,
  RequestLog,
  ScriptQueue,
  readBody,
  recordOf,
  startFakeHttpServer,
  type QueuedItem,
  type RecordedExchange,
} from './exchange';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** Token usage as Anthropic reports it on a message. */
export interface AnthropicUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  cache_creation: { ephemeral_5m_input_tokens: number; ephemeral_1h_input_tokens: number };
  service_tier: 'standard';
}

/** The prompt side of the usage, as computed by the cache simulation. */
export interface PromptUsage {
  input_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  /** Which TTL the created tokens were written with (from the last breakpoint's `ttl`). */
  creationTtl: '5m' | '1h';
  /** Number of blocks carrying `cache_control`. */
  breakpoints: number;
}

/** A request as the fake received it (url e.g. `/v1/messages?beta=true`), and how it was answered. */
export interface RecordedRequest extends RecordedExchange {
  /** Usage reported for a POST /v1/messages that was answered with content. */
  usage: AnthropicUsage | undefined;
}

export type ScriptedReply =
  | { kind: 'text'; text: string; stopReason?: string; thinking?: string }
  | { kind: 'tool_use'; text?: string; name: string; input: Record<string, unknown> }
  | { kind: 'error'; status: number; type: string; message?: string; headers?: Record<string, string> }
  | { kind: 'stream-error'; afterEvents: number; type?: string }
  | { kind: 'hang'; afterEvents?: number }
  | { kind: 'reset'; afterEvents?: number };

export interface ScriptOptions {
  /** How many matching requests get the reply (default 1; Infinity = until reset()). */
  times?: number;
  /** Only requests whose path (without query) equals this. */
  path?: string;
}

export interface FakeAnthropicOptions {
  /** When set, requests must carry `x-api-key: <apiKey>` or `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Delay between consecutive SSE events (default 0). */
  chunkIntervalMs?: number;
  host?: string;
  /** Model ids served by GET /v1/models. */
  models?: string[];
}

/** The prompt cache simulation, as exposed on `fake.cache`. */
export interface PromptCacheView {
  /** Usage of the last POST /v1/messages answered with content. */
  readonly lastUsage: AnthropicUsage | undefined;
  /** Number of cached prefixes. */
  readonly size: number;
  /** What a request body would get, without touching the cache. */
  peek(body: unknown): PromptUsage;
  clear(): void;
}

export interface FakeAnthropic {
  /** Base URL without `/v1`, e.g. http://127.0.0.1:40123 */
  readonly url: string;
  readonly port: number;
  readonly requests: RecordedRequest[];
  readonly cache: PromptCacheView;
  /** Delay between SSE events; may be changed at any time. */
  chunkIntervalMs: number;
  setNext(reply: ScriptedReply, opts?: ScriptOptions): void;
  /** Recorded requests whose path equals `path`. */
  requestsTo(path: string): RecordedRequest[];
  /** Resolves once at least `count` requests (optionally to `path`) were recorded. */
  waitForRequests(count: number, opts?: { path?: string; timeoutMs?: number }): Promise<RecordedRequest[]>;
  /** Clears recorded requests, scripted replies and the prompt cache. */
  reset(): void;
  /** Stops the server and destroys every open socket. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function approxTokens(chars: number): number {
  return Math.ceil(chars / 4);
}

/** JSON with object keys sorted recursively: the content identity Anthropic matches on. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (isObject(value)) {
    const keys = Object.keys(value)
      .filter((k) => value[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** Splits text into word pieces (whitespace kept) so a client sees several deltas. */
function wordPieces(text: string): string[] {
  const words = text.match(/\s*\S+\s*/g) ?? [];
  return words.length > 0 ? words : [text];
}

/** Splits a JSON text into about three partial_json pieces. */
function jsonPieces(json: string): string[] {
  if (json.length < 3) return [json];
  const size = Math.ceil(json.length / 3);
  const out: string[] = [];
  for (let i = 0; i < json.length; i += size) out.push(json.slice(i, i + size));
  return out;
}

/** The HTTP status Anthropic uses for an error type. */
export function statusForErrorType(type: string): number {
  const map: Record<string, number> = {
    invalid_request_error: 400,
    authentication_error: 401,
    billing_error: 402,
    permission_error: 403,
    not_found_error: 404,
    request_too_large: 413,
    rate_limit_error: 429,
    api_error: 500,
    timeout_error: 504,
    overloaded_error: 529,
  };
  return map[type] ?? 500;
}

function defaultErrorMessage(type: string): string {
  if (type === 'overloaded_error') return 'Overloaded';
  if (type === 'rate_limit_error') return 'Number of request tokens has exceeded your per-minute rate limit';
  if (type === 'api_error') return 'Internal server error';
  return `Fake Anthropic error (${type})`;
}

// ---------------------------------------------------------------------------------------------
// Prompt cache simulation
// ---------------------------------------------------------------------------------------------

/** One block of the prompt in cache order (tools → system → messages). */
export interface PromptBlock {
  /** Canonical JSON identity of the block (its own cache_control stripped). */
  canonical: string;
  /** True when the block carries `cache_control`. */
  breakpoint: boolean;
  ttl: '5m' | '1h';
}

function ttlOf(cacheControl: unknown): '5m' | '1h' {
  return isObject(cacheControl) && cacheControl['ttl'] === '1h' ? '1h' : '5m';
}

function toPromptBlock(kind: string, block: unknown, role?: string): PromptBlock {
  const obj = isObject(block) ? block : { type: 'text', text: typeof block === 'string' ? block : canonicalJson(block) };
  const { cache_control: cacheControl, ...rest } = obj;
  const identity: Json = role === undefined ? { [kind]: rest } : { [kind]: rest, role };
  return {
    canonical: canonicalJson(identity),
    breakpoint: cacheControl !== undefined && cacheControl !== null,
    ttl: ttlOf(cacheControl),
  };
}

/** Blocks of one content field: a string is one text block, an array is its blocks. */
function contentBlocks(content: unknown): unknown[] {
  if (typeof content === 'string') return [{ type: 'text', text: content }];
  if (Array.isArray(content)) return content;
  return [];
}

/** Flattens a Messages request into its ordered prompt blocks. */
export function flattenPromptBlocks(body: unknown): PromptBlock[] {
  if (!isObject(body)) return [];
  const out: PromptBlock[] = [];
  const tools = body['tools'];
  if (Array.isArray(tools)) for (const t of tools) out.push(toPromptBlock('tool', t));
  for (const b of contentBlocks(body['system'])) out.push(toPromptBlock('system', b));
  const messages = body['messages'];
  if (Array.isArray(messages)) {
    for (const m of messages) {
      if (!isObject(m)) continue;
      const role = typeof m['role'] === 'string' ? m['role'] : 'user';
      for (const b of contentBlocks(m['content'])) out.push(toPromptBlock('message', b, role));
    }
  }
  return out;
}

interface PrefixPoint {
  hash: string;
  tokens: number;
}

/** Hash-chains the blocks: point i identifies model + blocks[0..i]. */
function prefixPoints(model: string, blocks: PromptBlock[]): PrefixPoint[] {
  let hash = crypto.createHash('sha256').update(`model:${model}`).digest('hex');
  let chars = 0;
  return blocks.map((b) => {
    hash = crypto.createHash('sha256').update(hash).update('\n').update(b.canonical).digest('hex');
    chars += b.canonical.length;
    return { hash, tokens: approxTokens(chars) };
  });
}

/** Anthropic's prompt cache, reduced to prefix identities and token counts. */
export class PromptCacheSimulation implements PromptCacheView {
  lastUsage: AnthropicUsage | undefined;
  private readonly entries = new Map<string, number>();

  constructor(private readonly lookbackBlocks = 20) {}

  get size(): number {
    return this.entries.size;
  }

  peek(body: unknown): PromptUsage {
    return this.evaluate(body, false);
  }

  /** Computes the usage of a request and writes its breakpoint prefixes to the cache. */
  record(body: unknown): PromptUsage {
    return this.evaluate(body, true);
  }

  clear(): void {
    this.entries.clear();
    this.lastUsage = undefined;
  }

  private evaluate(body: unknown, store: boolean): PromptUsage {
    const model = isObject(body) && typeof body['model'] === 'string' ? body['model'] : '';
    const blocks = flattenPromptBlocks(body);
    const points = prefixPoints(model, blocks);
    const total = points[points.length - 1]?.tokens ?? 0;
    const breakpointIdx = blocks.flatMap((b, i) => (b.breakpoint ? [i] : []));
    const read = this.longestHit(points, breakpointIdx);
    const lastIdx = breakpointIdx[breakpointIdx.length - 1];
    const last = lastIdx === undefined ? undefined : points[lastIdx];
    const created = last === undefined || this.entries.has(last.hash) ? 0 : Math.max(0, last.tokens - read);
    if (store) {
      for (const i of breakpointIdx) {
        const p = points[i];
        if (p) this.entries.set(p.hash, p.tokens);
      }
    }
    return {
      input_tokens: Math.max(0, total - read - created),
      cache_creation_input_tokens: created,
      cache_read_input_tokens: read,
      creationTtl: lastIdx === undefined ? '5m' : (blocks[lastIdx]?.ttl ?? '5m'),
      breakpoints: breakpointIdx.length,
    };
  }

  /** Tokens of the longest cached prefix found looking back from any breakpoint. */
  private longestHit(points: PrefixPoint[], breakpointIdx: number[]): number {
    let best = 0;
    for (const bp of breakpointIdx) {
      for (let i = bp; i >= 0 && i > bp - this.lookbackBlocks; i--) {
        const p = points[i];
        if (p && this.entries.has(p.hash)) {
          best = Math.max(best, p.tokens);
          break;
        }
      }
    }
    return best;
  }
}

// ---------------------------------------------------------------------------------------------
// Reply planning
// ---------------------------------------------------------------------------------------------

type PlannedBlock =
  | { type: 'text'; text: string }
  | { type: 'thinking'; thinking: string; signature: string }
  | { type: 'tool_use'; id: string; name: string; input: Record<string, unknown> };

interface ReplyPlan {
  blocks: PlannedBlock[];
  stopReason: string;
}

/** The text of one content block when it is a text block. */
function textOf(block: unknown): string | undefined {
  if (typeof block === 'string') return block;
  return isObject(block) && block['type'] === 'text' && typeof block['text'] === 'string' ? block['text'] : undefined;
}

/** The user's prompt: the last user text block that is not a `<system-reminder>`. */
export function promptOf(body: Json): string {
  const messages = Array.isArray(body['messages']) ? body['messages'] : [];
  for (let m = messages.length - 1; m >= 0; m--) {
    const msg: unknown = messages[m];
    if (!isObject(msg) || msg['role'] !== 'user') continue;
    const blocks = contentBlocks(msg['content']);
    for (let b = blocks.length - 1; b >= 0; b--) {
      const text = textOf(blocks[b]);
      if (text !== undefined && !text.trimStart().startsWith('<system-reminder>')) return text;
    }
  }
  return '';
}

function fakeSignature(text: string): string {
  return crypto.createHash('sha256').update(`sig:${text}`).digest('base64');
}

function planReply(body: Json, script: ScriptedReply | undefined, nextId: (prefix: string) => string): ReplyPlan {
  if (script?.kind === 'text') {
    const blocks: PlannedBlock[] = [];
    if (script.thinking !== undefined)
      blocks.push({ type: 'thinking', thinking: script.thinking, signature: fakeSignature(script.thinking) });
    blocks.push({ type: 'text', text: script.text });
    return { blocks, stopReason: script.stopReason ?? 'end_turn' };
  }
  if (script?.kind === 'tool_use') {
    const blocks: PlannedBlock[] = [];
    if (script.text !== undefined) blocks.push({ type: 'text', text: script.text });
    blocks.push({ type: 'tool_use', id: nextId('toolu'), name: script.name, input: script.input });
    return { blocks, stopReason: 'tool_use' };
  }
  return { blocks: [{ type: 'text', text: `Answer: ${promptOf(body)}` }], stopReason: 'end_turn' };
}

function outputTokens(plan: ReplyPlan): number {
  let chars = 0;
  for (const b of plan.blocks) {
    if (b.type === 'text') chars += b.text.length;
    else if (b.type === 'thinking') chars += b.thinking.length;
    else chars += JSON.stringify(b.input).length + b.name.length;
  }
  return Math.max(1, approxTokens(chars));
}

function fullUsage(prompt: PromptUsage, output: number): AnthropicUsage {
  const created = prompt.cache_creation_input_tokens;
  return {
    input_tokens: prompt.input_tokens,
    output_tokens: output,
    cache_creation_input_tokens: created,
    cache_read_input_tokens: prompt.cache_read_input_tokens,
    cache_creation: {
      ephemeral_5m_input_tokens: prompt.creationTtl === '5m' ? created : 0,
      ephemeral_1h_input_tokens: prompt.creationTtl === '1h' ? created : 0,
    },
    service_tier: 'standard',
  };
}

function messageObject(id: string, model: string, plan: ReplyPlan, usage: AnthropicUsage): Json {
  return {
    id,
    type: 'message',
    role: 'assistant',
    model,
    content: plan.blocks,
    stop_reason: plan.stopReason,
    stop_sequence: null,
    usage,
  };
}

interface SseEvent {
  event: string;
  data: Json;
}

function blockStartOf(block: PlannedBlock): Json {
  if (block.type === 'text') return { type: 'text', text: '' };
  if (block.type === 'thinking') return { type: 'thinking', thinking: '', signature: '' };
  return { type: 'tool_use', id: block.id, name: block.name, input: {} };
}

function blockDeltas(block: PlannedBlock): Json[] {
  if (block.type === 'text') return wordPieces(block.text).map((text) => ({ type: 'text_delta', text }));
  if (block.type === 'thinking') {
    const pieces: Json[] = wordPieces(block.thinking).map((thinking) => ({ type: 'thinking_delta', thinking }));
    return [...pieces, { type: 'signature_delta', signature: block.signature }];
  }
  return jsonPieces(JSON.stringify(block.input)).map((partial_json) => ({ type: 'input_json_delta', partial_json }));
}

/** The full SSE event sequence of a streamed reply. */
function streamEvents(id: string, model: string, plan: ReplyPlan, usage: AnthropicUsage): SseEvent[] {
  const startUsage = { ...usage, output_tokens: 1 };
  const events: SseEvent[] = [
    {
      event: 'message_start',
      data: { type: 'message_start', message: { ...messageObject(id, model, plan, startUsage), content: [], stop_reason: null } },
    },
    { event: 'ping', data: { type: 'ping' } },
  ];
  plan.blocks.forEach((block, index) => {
    events.push({ event: 'content_block_start', data: { type: 'content_block_start', index, content_block: blockStartOf(block) } });
    for (const delta of blockDeltas(block))
      events.push({ event: 'content_block_delta', data: { type: 'content_block_delta', index, delta } });
    events.push({ event: 'content_block_stop', data: { type: 'content_block_stop', index } });
  });
  events.push({
    event: 'message_delta',
    data: {
      type: 'message_delta',
      delta: { stop_reason: plan.stopReason, stop_sequence: null },
      usage: { output_tokens: usage.output_tokens },
    },
  });
  events.push({ event: 'message_stop', data: { type: 'message_stop' } });
  return events;
}

// ---------------------------------------------------------------------------------------------
// Per-request exchange
// ---------------------------------------------------------------------------------------------

function errorBody(type: string, message: string, requestId: string): Json {
  return { type: 'error', error: { type, message }, request_id: requestId };
}

const requestIdOf = (seq: number): string => `req_fake${String(seq).padStart(8, '0')}`;

/** Per-request state (see exchange.ts) with Anthropic's `request-id` header, errors and SSE events. */
class Exchange extends BaseExchange<RecordedRequest> {
  readonly requestId: string;

  constructor(res: http.ServerResponse, record: RecordedRequest, serverClosing: () => boolean) {
    super(res, record, serverClosing, { 'request-id': requestIdOf(record.seq) });
    this.requestId = requestIdOf(record.seq);
  }

  sendError(status: number, type: string, message: string, headers: Record<string, string> = {}): void {
    this.sendJson(status, errorBody(type, message, this.requestId), headers);
  }

  writeEvent(e: SseEvent): void {
    if (!this.closed) this.res.write(`event: ${e.event}\ndata: ${JSON.stringify(e.data)}\n\n`);
  }
}

/** Sends the events of a streamed reply, applying pacing and stream faults. */
async function sendStream(ex: Exchange, events: SseEvent[], script: ScriptedReply | undefined, intervalMs: () => number): Promise<void> {
  ex.startSse();
  for (let sent = 0; sent <= events.length; sent++) {
    if (sent > 0 && !(await ex.wait(intervalMs()))) return;
    if (script?.kind === 'stream-error' && sent >= script.afterEvents) {
      const type = script.type ?? 'overloaded_error';
      ex.writeEvent({ event: 'error', data: { type: 'error', error: { type, message: defaultErrorMessage(type) } } });
      break;
    }
    if (script?.kind === 'hang' && sent >= (script.afterEvents ?? 0)) {
      await ex.untilClosed();
      return;
    }
    if (script?.kind === 'reset' && sent >= (script.afterEvents ?? 0)) {
      await ex.kill();
      return;
    }
    const e = events[sent];
    if (e === undefined) break;
    ex.writeEvent(e);
  }
  if (!ex.closed) ex.res.end();
}

/** Sends a non-streamed reply, applying faults. */
async function sendMessageJson(ex: Exchange, message: Json, script: ScriptedReply | undefined): Promise<void> {
  if (script?.kind === 'stream-error') {
    const type = script.type ?? 'overloaded_error';
    ex.sendError(statusForErrorType(type), type, defaultErrorMessage(type));
    return;
  }
  if (script?.kind === 'hang') {
    await ex.untilClosed();
    return;
  }
  if (script?.kind === 'reset') {
    const text = JSON.stringify(message);
    ex.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
    ex.res.write(text.slice(0, Math.floor(text.length / 2)));
    await ex.kill();
    return;
  }
  ex.sendJson(200, message);
}

// ---------------------------------------------------------------------------------------------
// Endpoint handlers
// ---------------------------------------------------------------------------------------------

interface ServerState {
  cache: PromptCacheSimulation;
  models: string[];
  chunkIntervalMs: number;
  nextId: (prefix: string) => string;
}

/** A 400 message for a Messages body that the real API would reject, or undefined. */
function invalidMessagesBody(json: unknown, breakpoints: number): string | undefined {
  if (!isObject(json)) return 'There was an issue with the request body: expected a JSON object.';
  if (typeof json['model'] !== 'string' || json['model'] === '') return 'model: Field required';
  if (typeof json['max_tokens'] !== 'number') return 'max_tokens: Field required';
  if (!Array.isArray(json['messages']) || json['messages'].length === 0) return 'messages: at least one message is required';
  if (breakpoints > 4) return `A maximum of 4 blocks with cache_control may be provided. Found ${breakpoints}.`;
  return undefined;
}

async function handleMessages(ex: Exchange, state: ServerState, script: ScriptedReply | undefined): Promise<void> {
  const json = ex.record.json;
  const breakpoints = flattenPromptBlocks(json).filter((b) => b.breakpoint).length;
  const invalid = invalidMessagesBody(json, breakpoints);
  if (invalid !== undefined || !isObject(json)) {
    ex.sendError(400, 'invalid_request_error', invalid ?? 'invalid body');
    return;
  }
  const model = String(json['model']);
  const plan = planReply(json, script, state.nextId);
  const usage = fullUsage(state.cache.record(json), outputTokens(plan));
  ex.record.usage = usage;
  state.cache.lastUsage = usage;
  const id = state.nextId('msg');
  if (json['stream'] === true) {
    await sendStream(ex, streamEvents(id, model, plan, usage), script, () => state.chunkIntervalMs);
    return;
  }
  await sendMessageJson(ex, messageObject(id, model, plan, usage), script);
}

function handleCountTokens(ex: Exchange): void {
  const json = ex.record.json;
  if (!isObject(json)) {
    ex.sendError(400, 'invalid_request_error', 'There was an issue with the request body: expected a JSON object.');
    return;
  }
  ex.sendJson(200, { input_tokens: approxTokens(JSON.stringify(json).length) });
}

function modelInfo(id: string): Json {
  const name = id
    .replace(/-\d{8}$/, '')
    .split('-')
    .map((w) => (w.length > 0 ? (w[0] ?? '').toUpperCase() + w.slice(1) : w))
    .join(' ');
  return { type: 'model', id, display_name: name, created_at: '2025-09-29T00:00:00Z' };
}

function handleModels(ex: Exchange, state: ServerState, path: string): void {
  const m = /^\/v1\/models\/(.+)$/.exec(path);
  if (m) {
    const wanted = decodeURIComponent(m[1] ?? '');
    if (!state.models.includes(wanted)) {
      ex.sendError(404, 'not_found_error', `model: ${wanted}`);
      return;
    }
    ex.sendJson(200, modelInfo(wanted));
    return;
  }
  ex.sendJson(200, {
    data: state.models.map(modelInfo),
    has_more: false,
    first_id: state.models[0] ?? null,
    last_id: state.models[state.models.length - 1] ?? null,
  });
}

// ---------------------------------------------------------------------------------------------
// Scripts, auth, server
// ---------------------------------------------------------------------------------------------

function scriptMatches(q: QueuedItem<ScriptedReply>, method: string, path: string): boolean {
  if (q.path !== undefined) return q.path === path;
  const contentKind = q.item.kind === 'text' || q.item.kind === 'tool_use' || q.item.kind === 'stream-error';
  return !contentKind || (method === 'POST' && path === '/v1/messages');
}

function isAuthorized(headers: http.IncomingHttpHeaders, apiKey: string | undefined): boolean {
  if (apiKey === undefined) return true;
  return headers['x-api-key'] === apiKey || headers.authorization === `Bearer ${apiKey}`;
}

const DEFAULT_MODELS = ['claude-sonnet-4-5-20250929', 'claude-opus-4-1-20250805', 'claude-haiku-4-5-20251001', 'claude-3-5-haiku-20241022'];

export async function startFakeAnthropic(options: FakeAnthropicOptions = {}): Promise<FakeAnthropic> {
  const host = options.host ?? '127.0.0.1';
  const log = new RequestLog<RecordedRequest>('fake Anthropic');
  const scripts = new ScriptQueue<ScriptedReply>();
  let seq = 0;
  let ids = 0;
  const state: ServerState = {
    cache: new PromptCacheSimulation(),
    models: options.models ?? DEFAULT_MODELS,
    chunkIntervalMs: options.chunkIntervalMs ?? 0,
    nextId: (prefix) => `${prefix}_fake${(++ids).toString(36).padStart(10, '0')}`,
  };

  const route = async (ex: Exchange, script: ScriptedReply | undefined): Promise<void> => {
    const { method, path } = ex.record;
    if (method === 'POST' && path === '/v1/messages') return handleMessages(ex, state, script);
    if (script?.kind === 'reset') {
      // Only the Messages endpoint streams; elsewhere a reset kills the socket after the headers.
      ex.writeHead(200, { 'content-type': 'application/json' });
      return ex.kill();
    }
    if (script?.kind === 'hang') return ex.untilClosed();
    if (method === 'POST' && path === '/v1/messages/count_tokens') return handleCountTokens(ex);
    if (method === 'GET' && (path === '/v1/models' || path.startsWith('/v1/models/'))) return handleModels(ex, state, path);
    ex.sendError(404, 'not_found_error', `Not found: ${method} ${path}`);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse, serverClosing: () => boolean): Promise<void> => {
    const rec: RecordedRequest = { ...recordOf(req, await readBody(req), ++seq), usage: undefined };
    log.add(rec);
    const ex = new Exchange(res, rec, serverClosing);
    if (res.socket?.destroyed) {
      rec.aborted = true;
      return;
    }
    if (!isAuthorized(req.headers, options.apiKey)) {
      ex.sendError(401, 'authentication_error', 'invalid x-api-key');
      return;
    }
    if (req.headers['anthropic-version'] === undefined) {
      ex.sendError(400, 'invalid_request_error', 'anthropic-version: header is required');
      return;
    }
    const script = scripts.take((q) => scriptMatches(q, rec.method, rec.path));
    if (script?.kind === 'error') {
      ex.sendError(script.status, script.type, script.message ?? defaultErrorMessage(script.type), script.headers ?? {});
      return;
    }
    if (script?.kind === 'hang' && script.afterEvents === undefined) {
      await ex.untilClosed();
      return;
    }
    await route(ex, script);
  };

  const server = await startFakeHttpServer({
    host,
    handle,
    crashReply: (err) => ({
      headers: { 'request-id': 'req_fake_crash' },
      body: JSON.stringify(errorBody('api_error', `Fake Anthropic crashed: ${String(err)}`, 'req_fake_crash')),
    }),
  });
  const port = server.port;

  return {
    url: `http://${host}:${port}`,
    port,
    ...log.view(),
    cache: state.cache,
    get chunkIntervalMs(): number {
      return state.chunkIntervalMs;
    },
    set chunkIntervalMs(ms: number) {
      state.chunkIntervalMs = ms;
    },
    setNext(reply: ScriptedReply, o: ScriptOptions = {}): void {
      scripts.push(reply, o);
    },
    reset(): void {
      log.clear();
      scripts.clear();
      state.cache.clear();
    },
    close: () => server.close(),
  };
}
