/**
 * A fake OpenAI upstream: a real `node:http` server on 127.0.0.1 (port 0 by default) that speaks
 * OpenAI's wire format closely enough for the official `openai` SDK and for mem0ai to work end to
 * end against it. Used by the integration tests and by the benchmarks (bench/fake-upstream-server.ts).
 *
 * Endpoints (everything lives under `/v1`; `fake.url` already ends in `/v1`):
 *   POST /v1/chat/completions  JSON `chat.completion`, or SSE `chat.completion.chunk` events when
 *                              `stream: true` (role delta, content pieces, finish_reason, optional
 *                              usage chunk for `stream_options.include_usage`, then `data: [DONE]`).
 *                              `n > 1` yields several choices; `max_tokens`/`max_completion_tokens`
 *                              truncate (finish_reason "length"); with `tools` and
 *                              `behaviour.toolCall` set, it answers with a tool call instead.
 *   POST /v1/embeddings        Deterministic hashed bag-of-word-stems vectors, L2-normalised, so texts
 *                              that share words have high cosine similarity and unrelated texts ~0.
 *                              Honours `dimensions` and `encoding_format` ('float' | 'base64' =
 *                              little-endian float32). NOTE: the openai v6 SDK sends
 *                              `encoding_format: "base64"` when the caller does not set one, and decodes
 *                              it transparently; mem0ai's OpenAIEmbedder sets "float" explicitly.
 *   POST /v1/responses         Responses API object, or SSE with `event:` lines (response.created,
 *                              response.in_progress, response.output_item.added,
 *                              response.content_part.added, response.output_text.delta,
 *                              response.output_text.done, response.content_part.done,
 *                              response.output_item.done, response.completed).
 *   GET  /v1/models[/:id]      Model list / model object.
 *   anything else              404 `{"error":{"message","type","param","code"}}` (OpenAI's shape).
 *
 * mem0ai (v3.3.x, node_modules/mem0ai/dist/oss/index.js) LLM calls and how they are answered:
 *   1. Memory.add (infer !== false) -> addToVectorStore makes exactly ONE chat completion:
 *      system = ADDITIVE_EXTRACTION_PROMPT ("You are a Memory Extractor ..."), user = a prompt with
 *      sections "## Summary", "## Last k Messages", "## Recently Extracted Memories",
 *      "## Existing Memories" (JSON), "## New Messages" ("role: content" lines), "## Observation Date",
 *      ..., "# Output:"; `response_format: {type: "json_object"}`. It parses
 *      `{"memory":[{"id","text","attributed_to"?,"linked_memory_ids"?}]}`. The fake takes the
 *      "## New Messages" section, runs `behaviour.extract(text)` (default: every sentence of the
 *      user's lines containing "my" or "I" becomes a fact) and answers with that JSON.
 *      There is no ADD/UPDATE/DELETE decision call and no LLM entity extraction in v3: entities are
 *      extracted locally (extractEntitiesBatch) and only embedded.
 *   2. Embeddings used by mem0ai (all `encoding_format: "float"`): a "dimension probe" at start-up
 *      when no vector dimension is configured, the query embedding of the new messages on add,
 *      embedBatch of the extracted memory texts, embedBatch of the extracted entities; on search,
 *      the query plus its entities. All are answered by /v1/embeddings.
 *   3. Only with an image_url message: get_image_description ("Provide a description of the image
 *      ...") -> answered with a fixed description.
 *   4. Only with the `llm` reranker configured: system "You are a relevance scoring assistant ...",
 *      user "Query: ...\n\nDocument: ..." -> answered with a number in [0,1] (word-stem overlap).
 *   5. Legacy prompts still referenced by mem0ai's LangChain wrapper (not called by v3's add):
 *      "Personal Information Organizer" -> `{"facts":[...]}` with the same extractor.
 *
 * Faults (for fault-injection tests), queued with `fake.setNext(fault, {times, path})` or
 * `fake.failNext(status, ...)`; each queued entry applies to the next `times` requests whose path
 * matches (default any path):
 *   {kind:'error', status, message?, type?, code?, param?, headers?, body?}  status + OpenAI error body
 *   {kind:'delay', ms}                  wait before sending headers, then answer normally
 *   {kind:'hang', afterChunks?}         never answer (until the socket closes); with afterChunks and a
 *                                       streamed request, send that many SSE events first, then stall
 *   {kind:'reset', afterChunks?, mode?} send headers (+ afterChunks SSE events, default 0; for JSON
 *                                       replies half the body) then RST the socket ('rst', default)
 *                                       or close it without finishing the chunked body ('close')
 *   {kind:'malformed-sse', afterChunks?, garbage?}  after afterChunks events (default 1) send an
 *                                       event whose data is not JSON and end without [DONE]; for a
 *                                       JSON reply, send truncated JSON
 * Stream pacing (benchmarks): `behaviour.firstTokenDelayMs` (after the headers, before the first
 * SSE event), `behaviour.chunkIntervalMs` (between events), `behaviour.responseDelayMs` (before
 * headers, every request), `behaviour.wordsPerChunk`, `behaviour.embeddingDelayMs` (extra wait before
 * every /v1/embeddings answer, like a real embeddings round trip; default 0).
 * Counters: `fake.requestCount` (all requests) and `fake.stats()` (per path, embedding inputs) are
 * kept even with `record: false`; with `statsEndpoint: true` the same figures are also served as
 * JSON on `GET /__stats` (not counted itself; off by default, so that path is a 404 otherwise).
 */
import type * as http from 'node:http';
import {
  Exchange as BaseExchange,
  RequestLog,
  ScriptQueue,
  readBody,
  recordOf,
  startFakeHttpServer,
  type RecordedExchange,
} from './exchange';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** A request as the fake received it (url e.g. `/v1/chat/completions?x=1`), and how it was answered. */
export type RecordedRequest = RecordedExchange;

export interface ChatMessageLite {
  role: string;
  content: string;
}

export interface ReplyContext {
  endpoint: 'chat' | 'responses';
  model: string;
  messages: ChatMessageLite[];
  lastUserText: string;
  systemText: string;
  /** Index of the choice being generated (n > 1). */
  choiceIndex: number;
  body: Record<string, unknown>;
}

export type ToolCallBehaviour =
  | false
  /** Call the first tool offered, arguments filled from its JSON-schema `required` properties. */
  | 'auto'
  | { name?: string; arguments?: string };

export interface FakeBehaviour {
  /** Fixed reply text, or a function of the request. undefined = default echo of the last user message. */
  reply: string | ((ctx: ReplyContext) => string) | undefined;
  /** Answer requests that carry `tools` with a tool call. Default false (plain text). */
  toolCall: ToolCallBehaviour;
  /** Delay before headers on every request. */
  responseDelayMs: number;
  /** Streams: delay between the headers and the first SSE event. */
  firstTokenDelayMs: number;
  /** Streams: delay between consecutive SSE events. */
  chunkIntervalMs: number;
  /** Streams: words of content per delta event. */
  wordsPerChunk: number;
  /** Extra delay before every /v1/embeddings answer (after responseDelayMs). Default 0. */
  embeddingDelayMs?: number;
  /** Default embedding dimension when the request has no `dimensions`. */
  embeddingDimensions: number;
  /** The embedding of a text (default `fakeEmbedding`); a test can make equal texts embed apart. */
  embedding?: ((text: string, dimensions: number) => number[]) | undefined;
  /** mem0ai fact extractor: gets the "## New Messages" text ("role: content" lines), returns facts. */
  extract: (messagesText: string) => string[];
  /** Model ids listed by GET /v1/models. */
  models: string[];
}

export type Fault =
  | {
      kind: 'error';
      status: number;
      message?: string;
      type?: string;
      code?: string | null;
      param?: string | null;
      headers?: Record<string, string>;
      /** Raw body to send instead of the OpenAI error JSON. */
      body?: string;
    }
  | { kind: 'delay'; ms: number }
  | { kind: 'hang'; afterChunks?: number }
  | { kind: 'reset'; afterChunks?: number; mode?: 'rst' | 'close' }
  | { kind: 'malformed-sse'; afterChunks?: number; garbage?: string };

export interface FaultOptions {
  /** How many matching requests get the fault (default 1; Infinity = until clearFaults/reset). */
  times?: number;
  /** Only requests whose path (without query) equals this, e.g. '/v1/chat/completions'. */
  path?: string;
}

export interface FakeUpstreamOptions extends Partial<FakeBehaviour> {
  host?: string;
  port?: number;
  /** When set, requests whose `Authorization` is not `Bearer <requireApiKey>` get OpenAI's 401. */
  requireApiKey?: string;
  /** Keep RecordedRequest entries (default true; benchmarks turn it off). */
  record?: boolean;
  /** Serve `stats()` as JSON on `GET /__stats` (default false). */
  statsEndpoint?: boolean;
}

/** Request counters, kept also when `record` is false (`GET /__stats` is never counted). */
export interface FakeUpstreamStats {
  /** Total requests handled (same as `requestCount`). */
  requests: number;
  /** Requests by path without the query, e.g. `{"/v1/embeddings": 12}`. */
  byPath: Record<string, number>;
  /** POST /v1/embeddings requests, and the input texts they carried in total. */
  embeddings: { requests: number; inputs: number };
}

export interface FakeUpstream {
  /** Base URL ending in /v1, e.g. http://127.0.0.1:PORT/v1 */
  readonly url: string;
  readonly port: number;
  readonly requests: RecordedRequest[];
  /** Mutable: change fields at any time, they apply to the next requests. */
  behaviour: FakeBehaviour;
  setBehaviour(patch: Partial<FakeBehaviour>): void;
  /** Queue a fault for the next matching request(s). */
  setNext(fault: Fault, opts?: FaultOptions): void;
  /** Shorthand for setNext({kind:'error', status, ...}). */
  failNext(
    status: number,
    opts?: FaultOptions & { message?: string; type?: string; code?: string | null; headers?: Record<string, string> },
  ): void;
  clearFaults(): void;
  /** Recorded requests whose path equals `path`. */
  requestsTo(path: string): RecordedRequest[];
  /** Resolves once at least `count` requests (optionally to `path`) were recorded. */
  waitForRequests(count: number, opts?: { path?: string; timeoutMs?: number }): Promise<RecordedRequest[]>;
  /** Total requests handled (also counted when record is false). */
  readonly requestCount: number;
  /** A snapshot of the request counters (also kept when record is false). */
  stats(): FakeUpstreamStats;
  /** Clears recorded requests and faults, and restores the initial behaviour. */
  reset(): void;
  /** Stops the server and destroys every open socket. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Text helpers (exported: tests may want the same tokenisation / similarity)
// ---------------------------------------------------------------------------------------------

const STOP_WORDS = new Set([
  'a',
  'an',
  'the',
  'is',
  'am',
  'are',
  'was',
  'were',
  'be',
  'been',
  'to',
  'of',
  'in',
  'on',
  'at',
  'for',
  'and',
  'or',
  'but',
  'it',
  'its',
  'this',
  'that',
  'with',
  'as',
  'by',
  'do',
  'does',
  'did',
  'so',
  'if',
  'then',
  'than',
  'there',
  'here',
  'from',
  'into',
  'about',
]);

/** Crude stemmer: lowercase, strip common English suffixes. */
export function stem(word: string): string {
  let w = word.toLowerCase();
  if (w.length > 5 && w.endsWith('ing')) w = w.slice(0, -3);
  else if (w.length > 4 && w.endsWith('ed')) w = w.slice(0, -2);
  else if (w.length > 4 && w.endsWith('ly')) w = w.slice(0, -2);
  else if (w.length > 4 && w.endsWith('ies')) w = `${w.slice(0, -3)}y`;
  else if (w.length > 4 && w.endsWith('es') && /(ch|sh|x|ss)es$/.test(w)) w = w.slice(0, -2);
  else if (w.length > 3 && w.endsWith('s') && !w.endsWith('ss')) w = w.slice(0, -1);
  return w;
}

/** Word stems of a text, stop words removed (unless nothing else is left). */
export function wordStems(text: string): string[] {
  const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  const stems = words.map(stem);
  const content = stems.filter((s) => !STOP_WORDS.has(s));
  return content.length > 0 ? content : stems;
}

function fnv1a(s: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** The fake's embedding: hashed bag of word stems into `dimensions` buckets, L2-normalised. */
export function fakeEmbedding(text: string, dimensions: number): number[] {
  const dims = Math.max(1, Math.floor(dimensions));
  const v = new Array<number>(dims).fill(0);
  const stems = wordStems(text);
  if (stems.length === 0) {
    // Never return a zero vector (cosine would be NaN): use the raw string's hash.
    v[fnv1a(text) % dims] = 1;
    return v;
  }
  const tf = new Map<string, number>();
  for (const s of stems) tf.set(s, (tf.get(s) ?? 0) + 1);
  for (const [s, n] of tf) {
    const i = fnv1a(s) % dims;
    v[i] = (v[i] ?? 0) + 1 + Math.log(n);
  }
  let norm = 0;
  for (const x of v) norm += x * x;
  norm = Math.sqrt(norm);
  return v.map((x) => x / norm);
}

export function cosineSimilarity(a: readonly number[], b: readonly number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
}

/** Splits "role: content" transcript lines into messages (continuation lines join the previous one). */
export function parseTranscript(text: string): ChatMessageLite[] {
  const out: ChatMessageLite[] = [];
  for (const line of text.split('\n')) {
    const m = /^(user|assistant|system|tool|developer):\s?(.*)$/.exec(line);
    if (m) out.push({ role: m[1] ?? 'user', content: m[2] ?? '' });
    else if (out.length > 0) {
      const last = out[out.length - 1];
      if (last) last.content += `\n${line}`;
    }
  }
  return out;
}

/** Default mem0 extractor: each sentence of the user's lines that contains "my" or "I" is a fact. */
export function defaultExtract(messagesText: string): string[] {
  const parsed = parseTranscript(messagesText);
  const userText =
    parsed.length > 0
      ? parsed
          .filter((m) => m.role === 'user')
          .map((m) => m.content)
          .join('\n')
      : messagesText;
  const facts: string[] = [];
  for (const raw of userText.split(/(?<=[.!?])\s+|\n+/)) {
    const s = raw
      .trim()
      .replace(/[.!?]+$/, '')
      .trim();
    if (!s) continue;
    if ((/\bmy\b/i.test(s) || /\bI\b/.test(s)) && !facts.includes(s)) facts.push(s);
  }
  return facts;
}

function defaultReply(ctx: ReplyContext): string {
  const last = ctx.lastUserText.trim().replace(/\s+/g, ' ');
  const echoed = last.length > 200 ? last.slice(0, 200) : last;
  return echoed ? `Fake reply to: ${echoed}` : 'Fake reply.';
}

// ---------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown, fallback = ''): string {
  return typeof v === 'string' ? v : fallback;
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** Text of an OpenAI message content: a string or an array of text / input_text / output_text parts. */
function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => (isObject(p) && typeof p['text'] === 'string' ? p['text'] : ''))
      .filter((t) => t.length > 0)
      .join('\n');
  }
  return '';
}

function approxTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** Splits text into stream pieces of `wordsPerChunk` words (whitespace kept, so pieces concatenate back). */
function splitPieces(text: string, wordsPerChunk: number): string[] {
  const words = text.match(/\s*\S+\s*/g) ?? [];
  if (words.length === 0) return text ? [text] : [];
  const per = Math.max(1, Math.floor(wordsPerChunk));
  const out: string[] = [];
  for (let i = 0; i < words.length; i += per) out.push(words.slice(i, i + per).join(''));
  return out;
}

function errorTypeFor(status: number): { type: string; code: string | null } {
  if (status === 401) return { type: 'invalid_request_error', code: 'invalid_api_key' };
  if (status === 403) return { type: 'invalid_request_error', code: 'unsupported_country_region_territory' };
  if (status === 404) return { type: 'invalid_request_error', code: null };
  if (status === 429) return { type: 'requests', code: 'rate_limit_exceeded' };
  if (status >= 500) return { type: 'server_error', code: null };
  return { type: 'invalid_request_error', code: null };
}

export function openAIErrorBody(
  message: string,
  type: string,
  code: string | null = null,
  param: string | null = null,
): { error: { message: string; type: string; param: string | null; code: string | null } } {
  return { error: { message, type, param, code } };
}

/** Per-request state (see exchange.ts) with the request, its behaviour and OpenAI-style errors. */
class Exchange extends BaseExchange<RecordedRequest> {
  constructor(
    readonly req: http.IncomingMessage,
    res: http.ServerResponse,
    record: RecordedRequest,
    readonly behaviour: FakeBehaviour,
    serverClosing: () => boolean,
  ) {
    super(res, record, serverClosing, {
      'x-request-id': `req_fake_${record.seq}`,
      'openai-processing-ms': '1',
      'openai-version': '2020-10-01',
    });
  }

  sendError(
    status: number,
    message: string,
    type?: string,
    code?: string | null,
    param: string | null = null,
    headers: Record<string, string> = {},
  ): void {
    const d = errorTypeFor(status);
    this.sendJson(status, openAIErrorBody(message, type ?? d.type, code === undefined ? d.code : code, param), headers);
  }
}

/** Writes SSE events honouring pacing and stream faults. */
class SseWriter {
  private sent = 0;

  constructor(
    private readonly ex: Exchange,
    private readonly fault: Fault | undefined,
  ) {}

  start(): void {
    this.ex.startSse();
  }

  /** Sends one event; false when the stream must stop (closed or a fault took over). */
  async send(data: string, event?: string): Promise<boolean> {
    const ex = this.ex;
    if (ex.closed) return false;
    const b = ex.behaviour;
    const ok = await ex.wait(this.sent === 0 ? b.firstTokenDelayMs : b.chunkIntervalMs);
    if (!ok) return false;
    const f = this.fault;
    if (f) {
      if (f.kind === 'reset' && this.sent >= (f.afterChunks ?? 0)) {
        await ex.kill(f.mode ?? 'rst');
        return false;
      }
      if (f.kind === 'hang' && f.afterChunks !== undefined && this.sent >= f.afterChunks) {
        await ex.untilClosed();
        return false;
      }
      if (f.kind === 'malformed-sse' && this.sent >= (f.afterChunks ?? 1)) {
        const garbage = f.garbage ?? '{"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{"delta":{"content":"oo';
        ex.res.end(`${event ? `event: ${event}\n` : ''}data: ${garbage}\n\n`);
        return false;
      }
    }
    ex.res.write(`${event ? `event: ${event}\n` : ''}data: ${data}\n\n`);
    this.sent++;
    return true;
  }

  end(): void {
    if (!this.ex.closed) this.ex.res.end();
  }
}

/** Sends a non-streamed JSON 200 reply, applying reset / malformed faults. */
async function sendJsonReply(ex: Exchange, body: unknown, fault: Fault | undefined): Promise<void> {
  if (fault?.kind === 'reset') {
    const text = JSON.stringify(body);
    ex.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
    ex.res.write(text.slice(0, Math.floor(text.length / 2)));
    await ex.kill(fault.mode ?? 'rst');
    return;
  }
  if (fault?.kind === 'malformed-sse') {
    const text = JSON.stringify(body);
    ex.writeHead(200, { 'content-type': 'application/json' });
    ex.res.end(fault.garbage ?? text.slice(0, Math.floor(text.length / 2)));
    return;
  }
  if (fault?.kind === 'hang' && fault.afterChunks !== undefined) {
    // "after K chunks" only means something for streams; a JSON reply just hangs.
    await ex.untilClosed();
    return;
  }
  ex.sendJson(200, body);
}

function messagesOf(body: Json): ChatMessageLite[] {
  const raw = body['messages'];
  if (!Array.isArray(raw)) return [];
  return raw.filter(isObject).map((m) => ({ role: str(m['role'], 'user'), content: contentText(m['content']) }));
}

function responsesMessagesOf(body: Json): ChatMessageLite[] {
  const out: ChatMessageLite[] = [];
  const instructions = body['instructions'];
  if (typeof instructions === 'string') out.push({ role: 'system', content: instructions });
  const input = body['input'];
  if (typeof input === 'string') out.push({ role: 'user', content: input });
  else if (Array.isArray(input)) {
    for (const item of input) {
      if (!isObject(item)) continue;
      if (item['type'] === undefined || item['type'] === 'message') {
        out.push({ role: str(item['role'], 'user'), content: contentText(item['content']) });
      } else if (item['type'] === 'function_call_output') {
        out.push({ role: 'tool', content: str(item['output']) });
      }
    }
  }
  return out;
}

function replyContext(endpoint: 'chat' | 'responses', body: Json, messages: ChatMessageLite[], choiceIndex: number): ReplyContext {
  const users = messages.filter((m) => m.role === 'user');
  return {
    endpoint,
    model: str(body['model'], 'gpt-fake'),
    messages,
    lastUserText: users[users.length - 1]?.content ?? '',
    systemText: messages
      .filter((m) => m.role === 'system' || m.role === 'developer')
      .map((m) => m.content)
      .join('\n'),
    choiceIndex,
    body,
  };
}

/** Special answers for mem0ai's internal prompts; undefined when the request is not one of them. */
function mem0Answer(ctx: ReplyContext, b: FakeBehaviour): string | undefined {
  const sys = ctx.systemText;
  if (sys.includes('Memory Extractor')) {
    const user = ctx.lastUserText;
    const m = /## New Messages\n([\s\S]*?)(?:\n## |\n# Output:|$)/.exec(user);
    const newMessages = m ? (m[1] ?? '') : user;
    const facts = b.extract(newMessages.trim());
    return JSON.stringify({
      memory: facts.map((text, i) => ({ id: String(i), text, attributed_to: 'user', linked_memory_ids: [] })),
    });
  }
  if (sys.includes('Personal Information Organizer')) {
    const input = ctx.lastUserText.replace(/^[\s\S]*?Input:\s*/, '');
    return JSON.stringify({ facts: b.extract(input) });
  }
  if (sys.includes('relevance scoring assistant')) {
    const m = /^Query: ([\s\S]*?)\n\nDocument: ([\s\S]*)$/.exec(ctx.lastUserText);
    const q = new Set(wordStems(m?.[1] ?? ''));
    const d = new Set(wordStems(m?.[2] ?? ''));
    let shared = 0;
    for (const s of q) if (d.has(s)) shared++;
    return (q.size === 0 ? 0 : shared / q.size).toFixed(2);
  }
  if (ctx.messages.some((msg) => msg.role === 'user' && msg.content.startsWith('Provide a description of the image'))) {
    return 'An image (described by the fake upstream).';
  }
  return undefined;
}

function replyText(ctx: ReplyContext, b: FakeBehaviour): string {
  const special = mem0Answer(ctx, b);
  if (special !== undefined) return special;
  let text: string;
  if (typeof b.reply === 'function') text = b.reply(ctx);
  else if (typeof b.reply === 'string') text = b.reply;
  else text = defaultReply(ctx);
  if (ctx.choiceIndex > 0 && typeof b.reply !== 'function') text = `${text} (choice ${ctx.choiceIndex + 1})`;
  return text;
}

/** Truncates to max tokens (approx: words), returning [text, finish_reason]. */
function applyMaxTokens(text: string, body: Json): [string, 'stop' | 'length'] {
  const max = num(body['max_completion_tokens']) ?? num(body['max_tokens']) ?? num(body['max_output_tokens']);
  if (max === undefined) return [text, 'stop'];
  const words = text.match(/\s*\S+/g) ?? [];
  if (words.length <= max) return [text, 'stop'];
  return [words.slice(0, Math.max(0, max)).join(''), 'length'];
}

interface ToolCallPlan {
  name: string;
  arguments: string;
}

function planToolCall(body: Json, b: FakeBehaviour): ToolCallPlan | undefined {
  if (b.toolCall === false) return undefined;
  const tools = body['tools'];
  if (!Array.isArray(tools) || tools.length === 0) return undefined;
  if (body['tool_choice'] === 'none') return undefined;
  const first = tools.find(isObject);
  // Chat tools: {type:'function', function:{name, parameters}}; Responses tools: {type:'function', name, parameters}.
  const fn = first && isObject(first['function']) ? first['function'] : first;
  const toolName = fn ? str(fn['name'], 'tool') : 'tool';
  let args = '{}';
  const params = fn?.['parameters'];
  if (isObject(params) && Array.isArray(params['required'])) {
    const props = isObject(params['properties']) ? params['properties'] : {};
    const filled: Json = {};
    for (const key of params['required']) {
      if (typeof key !== 'string') continue;
      const p = props[key];
      const t = isObject(p) ? p['type'] : undefined;
      filled[key] = t === 'number' || t === 'integer' ? 1 : t === 'boolean' ? true : t === 'array' ? [] : t === 'object' ? {} : 'fake';
    }
    args = JSON.stringify(filled);
  }
  if (b.toolCall === 'auto') return { name: toolName, arguments: args };
  return { name: b.toolCall.name ?? toolName, arguments: b.toolCall.arguments ?? args };
}

// ---------------------------------------------------------------------------------------------
// Endpoint handlers
// ---------------------------------------------------------------------------------------------

let idCounter = 0;
function nextId(prefix: string): string {
  idCounter++;
  return `${prefix}-fake${idCounter.toString(36).padStart(6, '0')}`;
}

async function handleChat(ex: Exchange, body: Json, fault: Fault | undefined): Promise<void> {
  const b = ex.behaviour;
  if (typeof body['model'] !== 'string' || !body['model']) {
    ex.sendError(400, 'you must provide a model parameter', 'invalid_request_error', null, 'model');
    return;
  }
  if (!Array.isArray(body['messages']) || body['messages'].length === 0) {
    ex.sendError(400, "Invalid value for 'messages': expected a non-empty array.", 'invalid_request_error', 'invalid_value', 'messages');
    return;
  }
  const messages = messagesOf(body);
  const model = str(body['model']);
  const n = Math.max(1, Math.min(16, Math.floor(num(body['n']) ?? 1)));
  const id = nextId('chatcmpl');
  const created = Math.floor(Date.now() / 1000);
  const promptTokens = approxTokens(messages.map((m) => m.content).join('\n'));
  const tool = planToolCall(body, b);
  const choices: Array<{ text: string; finish: 'stop' | 'length' | 'tool_calls'; tool: ToolCallPlan | undefined; toolId: string }> = [];
  for (let i = 0; i < n; i++) {
    if (tool) {
      choices.push({ text: '', finish: 'tool_calls', tool, toolId: `call_fake${idCounter}_${i}` });
    } else {
      const [text, finish] = applyMaxTokens(replyText(replyContext('chat', body, messages, i), b), body);
      choices.push({ text, finish, tool: undefined, toolId: '' });
    }
  }
  const completionTokens = choices.reduce((acc, c) => acc + (c.tool ? approxTokens(c.tool.arguments) : approxTokens(c.text)), 0);
  const usage = {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  };

  if (body['stream'] !== true) {
    await sendJsonReply(
      ex,
      {
        id,
        object: 'chat.completion',
        created,
        model,
        system_fingerprint: 'fp_fake',
        choices: choices.map((c, index) => ({
          index,
          message: c.tool
            ? {
                role: 'assistant',
                content: null,
                refusal: null,
                tool_calls: [{ id: c.toolId, type: 'function', function: { name: c.tool.name, arguments: c.tool.arguments } }],
              }
            : { role: 'assistant', content: c.text, refusal: null },
          logprobs: null,
          finish_reason: c.finish,
        })),
        usage,
      },
      fault,
    );
    return;
  }

  const streamOptions = body['stream_options'];
  const includeUsage = isObject(streamOptions) && streamOptions['include_usage'] === true;
  const sse = new SseWriter(ex, fault);
  sse.start();
  const chunk = (choicesPart: unknown[], extra: Json = {}): string =>
    JSON.stringify({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      system_fingerprint: 'fp_fake',
      choices: choicesPart,
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    });
  const choiceDelta = (index: number, delta: Json, finish: string | null = null): Json => ({
    index,
    delta,
    logprobs: null,
    finish_reason: finish,
  });

  // Role first, then content pieces (or tool call pieces), interleaved across choices, then finish.
  for (let i = 0; i < choices.length; i++) {
    if (!(await sse.send(chunk([choiceDelta(i, { role: 'assistant', content: choices[i]?.tool ? null : '', refusal: null })])))) return;
  }
  const pieces = choices.map((c) => (c.tool ? splitPieces(c.tool.arguments, 1) : splitPieces(c.text, b.wordsPerChunk)));
  const maxPieces = Math.max(0, ...pieces.map((p) => p.length));
  for (let k = 0; k < maxPieces || (k === 0 && choices.some((c) => c.tool)); k++) {
    for (let i = 0; i < choices.length; i++) {
      const c = choices[i];
      const piece = pieces[i]?.[k];
      if (!c) continue;
      if (c.tool) {
        const call: Json = { index: 0, function: { arguments: piece ?? '' } };
        if (k === 0) {
          call['id'] = c.toolId;
          call['type'] = 'function';
          call['function'] = { name: c.tool.name, arguments: piece ?? '' };
        } else if (piece === undefined) continue;
        if (!(await sse.send(chunk([choiceDelta(i, { tool_calls: [call] })])))) return;
      } else if (piece !== undefined) {
        if (!(await sse.send(chunk([choiceDelta(i, { content: piece })])))) return;
      }
    }
  }
  for (let i = 0; i < choices.length; i++) {
    if (!(await sse.send(chunk([choiceDelta(i, {}, choices[i]?.finish ?? 'stop')])))) return;
  }
  if (includeUsage && !(await sse.send(chunk([], { usage })))) return;
  if (!(await sse.send('[DONE]'))) return;
  sse.end();
}

async function handleEmbeddings(ex: Exchange, body: Json, fault: Fault | undefined): Promise<void> {
  const b = ex.behaviour;
  if (typeof body['model'] !== 'string' || !body['model']) {
    ex.sendError(400, 'you must provide a model parameter', 'invalid_request_error', null, 'model');
    return;
  }
  const input = body['input'];
  let texts: string[];
  if (typeof input === 'string') texts = [input];
  else if (Array.isArray(input) && input.length > 0 && input.every((x) => typeof x === 'number')) {
    texts = [input.map((t) => `tok${String(t)}`).join(' ')];
  } else if (Array.isArray(input) && input.length > 0) {
    texts = input.map((x) => (typeof x === 'string' ? x : Array.isArray(x) ? x.map((t) => `tok${String(t)}`).join(' ') : ''));
  } else {
    ex.sendError(400, "'input' is a required property", 'invalid_request_error', null, 'input');
    return;
  }
  if (texts.some((t) => t.length === 0)) {
    ex.sendError(
      400,
      "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
      'invalid_request_error',
      null,
      null,
    );
    return;
  }
  const requestedDims = num(body['dimensions']);
  if (requestedDims !== undefined && (requestedDims < 1 || !Number.isInteger(requestedDims))) {
    ex.sendError(400, `Invalid value for 'dimensions': ${requestedDims}.`, 'invalid_request_error', 'invalid_value', 'dimensions');
    return;
  }
  const dims = requestedDims ?? b.embeddingDimensions;
  const format = str(body['encoding_format'], 'float');
  if (format !== 'float' && format !== 'base64') {
    ex.sendError(400, `Invalid value for 'encoding_format': ${format}.`, 'invalid_request_error', 'invalid_value', 'encoding_format');
    return;
  }
  const data = texts.map((t, index) => {
    const vec = (b.embedding ?? fakeEmbedding)(t, dims);
    let embedding: number[] | string = vec;
    if (format === 'base64') {
      const buf = Buffer.alloc(vec.length * 4);
      vec.forEach((x, i) => {
        buf.writeFloatLE(x, i * 4);
      });
      embedding = buf.toString('base64');
    }
    return { object: 'embedding', index, embedding };
  });
  const tokens = texts.reduce((acc, t) => acc + approxTokens(t), 0);
  await sendJsonReply(
    ex,
    { object: 'list', data, model: str(body['model']), usage: { prompt_tokens: tokens, total_tokens: tokens } },
    fault,
  );
}

async function handleResponses(ex: Exchange, body: Json, fault: Fault | undefined): Promise<void> {
  const b = ex.behaviour;
  if (typeof body['model'] !== 'string' || !body['model']) {
    ex.sendError(400, 'you must provide a model parameter', 'invalid_request_error', null, 'model');
    return;
  }
  const messages = responsesMessagesOf(body);
  const model = str(body['model']);
  const id = nextId('resp');
  const msgId = nextId('msg');
  const createdAt = Math.floor(Date.now() / 1000);
  const tool = planToolCall(body, b);
  const [text, finish] = tool ? ['', 'stop' as const] : applyMaxTokens(replyText(replyContext('responses', body, messages, 0), b), body);
  const inputTokens = approxTokens(messages.map((m) => m.content).join('\n'));
  const outputTokens = approxTokens(tool ? tool.arguments : text);
  const usage = {
    input_tokens: inputTokens,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: outputTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: inputTokens + outputTokens,
  };
  const callId = `call_${msgId}`;
  const completedItem: Json = tool
    ? { id: msgId, type: 'function_call', status: 'completed', call_id: callId, name: tool.name, arguments: tool.arguments }
    : {
        id: msgId,
        type: 'message',
        status: 'completed',
        role: 'assistant',
        content: [{ type: 'output_text', text, annotations: [], logprobs: [] }],
      };
  const responseObject = (status: 'in_progress' | 'completed' | 'incomplete', withOutput: boolean): Json => ({
    id,
    object: 'response',
    created_at: createdAt,
    status,
    background: false,
    error: null,
    incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: typeof body['instructions'] === 'string' ? body['instructions'] : null,
    max_output_tokens: num(body['max_output_tokens']) ?? null,
    model,
    output: withOutput ? [completedItem] : [],
    parallel_tool_calls: true,
    previous_response_id: typeof body['previous_response_id'] === 'string' ? body['previous_response_id'] : null,
    reasoning: { effort: null, summary: null },
    store: body['store'] !== false,
    temperature: num(body['temperature']) ?? 1,
    text: { format: { type: 'text' } },
    tool_choice: body['tool_choice'] ?? 'auto',
    tools: Array.isArray(body['tools']) ? body['tools'] : [],
    top_p: num(body['top_p']) ?? 1,
    truncation: 'disabled',
    usage: withOutput ? usage : null,
    metadata: isObject(body['metadata']) ? body['metadata'] : {},
  });
  const finalStatus = finish === 'length' ? 'incomplete' : 'completed';

  if (body['stream'] !== true) {
    await sendJsonReply(ex, responseObject(finalStatus, true), fault);
    return;
  }
  const sse = new SseWriter(ex, fault);
  sse.start();
  let seq = 0;
  const emit = (type: string, payload: Json): Promise<boolean> =>
    sse.send(JSON.stringify({ type, sequence_number: seq++, ...payload }), type);
  if (!(await emit('response.created', { response: responseObject('in_progress', false) }))) return;
  if (!(await emit('response.in_progress', { response: responseObject('in_progress', false) }))) return;
  if (tool) {
    const item = { id: msgId, type: 'function_call', status: 'in_progress', call_id: callId, name: tool.name, arguments: '' };
    if (!(await emit('response.output_item.added', { output_index: 0, item }))) return;
    for (const piece of splitPieces(tool.arguments, 1)) {
      if (!(await emit('response.function_call_arguments.delta', { item_id: msgId, output_index: 0, delta: piece }))) return;
    }
    if (!(await emit('response.function_call_arguments.done', { item_id: msgId, output_index: 0, arguments: tool.arguments }))) return;
  } else {
    const item = { id: msgId, type: 'message', status: 'in_progress', role: 'assistant', content: [] };
    if (!(await emit('response.output_item.added', { output_index: 0, item }))) return;
    const emptyPart = { type: 'output_text', text: '', annotations: [], logprobs: [] };
    if (!(await emit('response.content_part.added', { item_id: msgId, output_index: 0, content_index: 0, part: emptyPart }))) return;
    for (const piece of splitPieces(text, b.wordsPerChunk)) {
      if (!(await emit('response.output_text.delta', { item_id: msgId, output_index: 0, content_index: 0, delta: piece, logprobs: [] })))
        return;
    }
    if (!(await emit('response.output_text.done', { item_id: msgId, output_index: 0, content_index: 0, text, logprobs: [] }))) return;
    const part = { type: 'output_text', text, annotations: [], logprobs: [] };
    if (!(await emit('response.content_part.done', { item_id: msgId, output_index: 0, content_index: 0, part }))) return;
  }
  if (!(await emit('response.output_item.done', { output_index: 0, item: completedItem }))) return;
  const doneType = finalStatus === 'completed' ? 'response.completed' : 'response.incomplete';
  if (!(await emit(doneType, { response: responseObject(finalStatus, true) }))) return;
  sse.end();
}

function handleModels(ex: Exchange, path: string): void {
  const models = ex.behaviour.models;
  const created = 1_700_000_000;
  const m = /^\/v1\/models\/(.+)$/.exec(path);
  if (m) {
    const wanted = decodeURIComponent(m[1] ?? '');
    if (!models.includes(wanted)) {
      ex.sendError(404, `The model '${wanted}' does not exist`, 'invalid_request_error', 'model_not_found', 'model');
      return;
    }
    ex.sendJson(200, { id: wanted, object: 'model', created, owned_by: 'fake-upstream' });
    return;
  }
  ex.sendJson(200, { object: 'list', data: models.map((id) => ({ id, object: 'model', created, owned_by: 'fake-upstream' })) });
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

function defaultBehaviour(opts: FakeUpstreamOptions): FakeBehaviour {
  return {
    reply: opts.reply,
    toolCall: opts.toolCall ?? false,
    responseDelayMs: opts.responseDelayMs ?? 0,
    firstTokenDelayMs: opts.firstTokenDelayMs ?? 0,
    chunkIntervalMs: opts.chunkIntervalMs ?? 0,
    wordsPerChunk: opts.wordsPerChunk ?? 1,
    embeddingDelayMs: opts.embeddingDelayMs ?? 0,
    embeddingDimensions: opts.embeddingDimensions ?? 1536,
    extract: opts.extract ?? defaultExtract,
    models: opts.models ?? ['gpt-4o-mini', 'gpt-4.1-mini', 'gpt-5-mini', 'text-embedding-3-small', 'text-embedding-3-large'],
  };
}

export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const host = opts.host ?? '127.0.0.1';
  const record = opts.record ?? true;
  const log = new RequestLog<RecordedRequest>('fake upstream');
  const faults = new ScriptQueue<Fault>();
  let seq = 0;
  let handled = 0;
  const byPath = new Map<string, number>();
  let embeddingRequests = 0;
  let embeddingInputs = 0;

  const state: { behaviour: FakeBehaviour } = { behaviour: defaultBehaviour(opts) };

  const stats = (): FakeUpstreamStats => ({
    requests: handled,
    byPath: Object.fromEntries(byPath),
    embeddings: { requests: embeddingRequests, inputs: embeddingInputs },
  });

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse, serverClosing: () => boolean): Promise<void> => {
    const rec = recordOf(req, await readBody(req), seq + 1);
    const { path, json } = rec;
    if (opts.statsEndpoint === true && req.method === 'GET' && path === '/__stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(stats()));
      return;
    }
    seq = rec.seq;
    byPath.set(path, (byPath.get(path) ?? 0) + 1);
    if (req.method === 'POST' && path === '/v1/embeddings') {
      embeddingRequests++;
      const input = isObject(json) ? json['input'] : undefined;
      // A string or one token array is one input; an array of strings / token arrays is one each.
      if (typeof input === 'string') embeddingInputs += 1;
      else if (Array.isArray(input)) embeddingInputs += input.length > 0 && input.every((x) => typeof x === 'number') ? 1 : input.length;
    }
    handled++;
    if (record) log.add(rec);

    // Behaviour is captured per request so mid-request changes do not tear a response.
    const behaviour = { ...state.behaviour };
    const ex = new Exchange(req, res, rec, behaviour, serverClosing);
    if (res.socket?.destroyed) {
      // The client went away while we were reading the body.
      rec.aborted = true;
      return;
    }
    const fault = faults.take((q) => q.path === undefined || q.path === path);

    if (!(await ex.wait(behaviour.responseDelayMs))) return;
    if (path === '/v1/embeddings' && !(await ex.wait(behaviour.embeddingDelayMs ?? 0))) return;
    if (opts.requireApiKey !== undefined && req.headers.authorization !== `Bearer ${opts.requireApiKey}`) {
      ex.sendError(
        401,
        'Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.',
        'invalid_request_error',
        'invalid_api_key',
      );
      return;
    }
    if (fault?.kind === 'delay') {
      if (!(await ex.wait(fault.ms))) return;
    } else if (fault?.kind === 'error') {
      const d = errorTypeFor(fault.status);
      if (fault.body !== undefined) {
        ex.writeHead(fault.status, { 'content-type': 'application/json', ...(fault.headers ?? {}) });
        res.end(fault.body);
      } else {
        ex.sendJson(
          fault.status,
          openAIErrorBody(
            fault.message ?? `Fake upstream error (${fault.status})`,
            fault.type ?? d.type,
            fault.code === undefined ? d.code : fault.code,
            fault.param ?? null,
          ),
          fault.headers ?? {},
        );
      }
      return;
    } else if (fault?.kind === 'hang' && fault.afterChunks === undefined) {
      await ex.untilClosed();
      return;
    }

    const method = rec.method;
    const streamFault = fault?.kind === 'delay' ? undefined : fault;
    if (method === 'POST' && ['/v1/chat/completions', '/v1/embeddings', '/v1/responses'].includes(path)) {
      if (!isObject(json)) {
        ex.sendError(
          400,
          "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
          'invalid_request_error',
        );
        return;
      }
      if (path === '/v1/chat/completions') await handleChat(ex, json, streamFault);
      else if (path === '/v1/embeddings') await handleEmbeddings(ex, json, streamFault);
      else await handleResponses(ex, json, streamFault);
      return;
    }
    if (method === 'GET' && (path === '/v1/models' || path.startsWith('/v1/models/'))) {
      handleModels(ex, path);
      return;
    }
    ex.sendError(404, `Invalid URL (${method} ${path})`, 'invalid_request_error', null);
  };

  const server = await startFakeHttpServer({
    host,
    ...(opts.port === undefined ? {} : { port: opts.port }),
    handle,
    crashReply: (err) => ({ headers: {}, body: JSON.stringify(openAIErrorBody(`Fake upstream crashed: ${String(err)}`, 'server_error')) }),
  });
  const port = server.port;

  const fake: FakeUpstream = {
    url: `http://${host}:${port}/v1`,
    port,
    ...log.view(),
    get behaviour(): FakeBehaviour {
      return state.behaviour;
    },
    set behaviour(b: FakeBehaviour) {
      state.behaviour = b;
    },
    get requestCount(): number {
      return handled;
    },
    stats,
    setBehaviour(patch: Partial<FakeBehaviour>): void {
      const next: FakeBehaviour = { ...state.behaviour };
      for (const key of Object.keys(patch) as Array<keyof FakeBehaviour>) {
        // Assign key by key so an explicit `reply: undefined` resets the reply to the default.
        (next as unknown as Record<string, unknown>)[key] = patch[key];
      }
      state.behaviour = next;
    },
    setNext(fault: Fault, o: FaultOptions = {}): void {
      faults.push(fault, o);
    },
    failNext(status, o = {}): void {
      const fault: Fault = { kind: 'error', status };
      if (o.message !== undefined) fault.message = o.message;
      if (o.type !== undefined) fault.type = o.type;
      if (o.code !== undefined) fault.code = o.code;
      if (o.headers !== undefined) fault.headers = o.headers;
      faults.push(fault, o);
    },
    clearFaults(): void {
      faults.clear();
    },
    reset(): void {
      log.clear();
      faults.clear();
      state.behaviour = defaultBehaviour(opts);
    },
    close: () => server.close(),
  };
  return fake;
}
