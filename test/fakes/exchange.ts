/**
 * The connection plumbing shared by the node:http fakes (openai-upstream.ts, anthropic-upstream.ts):
 * what a fake records of a request, the per-request `Exchange` (close detection that sets
 * `completed` / `aborted` on the record, waits cut short when the connection goes away, status-
 * recording writes with the fake's own response headers, SSE start, socket kills), the request log
 * behind `requests` / `requestsTo` / `waitForRequests`, the queue of scripted replies or faults,
 * and the server itself (listen on a port, track sockets, a 500 when a handler throws, close that
 * destroys every open socket). Each fake keeps its own wire format and public API on top of it.
 *
 * Node built-ins only: bench/lib.ts transpiles this file, with openai-upstream.ts, for the
 * benchmarks' fake upstream child process.
 */
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

// ---------------------------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------------------------

/** What every fake records of a request. */
export interface RecordedExchange {
  /** Sequence number, starting at 1. */
  seq: number;
  method: string;
  /** Path + query exactly as received, e.g. `/v1/messages?beta=true`. */
  url: string;
  /** Path without the query. */
  path: string;
  headers: http.IncomingHttpHeaders;
  /** The raw body bytes exactly as received. */
  body: Buffer;
  /** Parsed JSON body, or undefined when the body was empty or not JSON. */
  json: unknown;
  /** True when the client closed the connection before the response was complete. */
  aborted: boolean;
  /** True once the response was fully written. */
  completed: boolean;
  /** Status code sent, once headers were sent. */
  status: number | undefined;
  receivedAt: number;
}

export async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export function parseJson(body: Buffer): unknown {
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/** A fresh record of a request whose body was read, nothing answered yet. */
export function recordOf(req: http.IncomingMessage, body: Buffer, seq: number): RecordedExchange {
  const url = req.url ?? '/';
  return {
    seq,
    method: req.method ?? 'GET',
    url,
    path: url.split('?')[0] ?? '/',
    headers: req.headers,
    body,
    json: parseJson(body),
    aborted: false,
    completed: false,
    status: undefined,
    receivedAt: Date.now(),
  };
}

/** The part of a fake's public API that reads its request log. */
export interface RequestLogView<R> {
  readonly requests: R[];
  /** Recorded requests whose path equals `path`. */
  requestsTo(path: string): R[];
  /** Resolves once at least `count` requests (optionally to `path`) were recorded. */
  waitForRequests(count: number, opts?: { path?: string; timeoutMs?: number }): Promise<R[]>;
}

/** The recorded requests of a fake, and the waits for them. */
export class RequestLog<R extends RecordedExchange> {
  /** Cleared in place by `clear()`, so a fake can hand this very array out as `requests`. */
  readonly requests: R[] = [];
  private readonly waiters = new Set<() => void>();

  /** `name` starts the timeout error of `waitFor`, e.g. "fake upstream". */
  constructor(private readonly name: string) {}

  add(rec: R): void {
    this.requests.push(rec);
    for (const w of [...this.waiters]) w();
  }

  clear(): void {
    this.requests.length = 0;
  }

  /** Recorded requests whose path equals `path`. */
  to(path: string): R[] {
    return this.requests.filter((r) => r.path === path);
  }

  /** Resolves once at least `count` requests (optionally to `path`) were recorded. */
  waitFor(count: number, o: { path?: string; timeoutMs?: number } = {}): Promise<R[]> {
    const pick = (): R[] => (o.path === undefined ? this.requests : this.to(o.path));
    if (pick().length >= count) return Promise.resolve(pick());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`${this.name}: expected ${count} request(s)${o.path ? ` to ${o.path}` : ''}, got ${pick().length}`));
      }, o.timeoutMs ?? 5000);
      const check = (): void => {
        if (pick().length < count) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(pick());
      };
      this.waiters.add(check);
    });
  }

  /** `requests`, `requestsTo` and `waitForRequests`, to spread into a fake's public object. */
  view(): RequestLogView<R> {
    return {
      requests: this.requests,
      requestsTo: (path) => this.to(path),
      waitForRequests: (count, o) => this.waitFor(count, o),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Scripted replies / faults
// ---------------------------------------------------------------------------------------------

export interface QueuedItem<T> {
  item: T;
  remaining: number;
  /** Only requests whose path (without query) equals this; undefined = the fake decides. */
  path: string | undefined;
}

/** Items (faults, scripted replies) queued for the next `times` matching requests, in order. */
export class ScriptQueue<T> {
  private items: Array<QueuedItem<T>> = [];

  push(item: T, o: { times?: number; path?: string } = {}): void {
    this.items.push({ item, remaining: o.times ?? 1, path: o.path });
  }

  /** The first queued item that `matches`, used up once. */
  take(matches: (q: QueuedItem<T>) => boolean): T | undefined {
    const i = this.items.findIndex((q) => q.remaining > 0 && matches(q));
    const q = this.items[i];
    if (q === undefined) return undefined;
    q.remaining--;
    if (q.remaining <= 0) this.items.splice(i, 1);
    return q.item;
  }

  clear(): void {
    this.items = [];
  }
}

// ---------------------------------------------------------------------------------------------
// Per-request exchange
// ---------------------------------------------------------------------------------------------

const SSE_HEADERS: Record<string, string> = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
};

/** Per-request state: close detection, cancellable waits, status-recording writes. */
export class Exchange<R extends RecordedExchange = RecordedExchange> {
  closed = false;
  /** Set when the fake itself destroyed the socket (reset / server close): not a client abort. */
  serverKilled = false;
  private readonly closeWaiters: Array<() => void> = [];

  /** `responseHeaders` go first on every response (request ids and the like). */
  constructor(
    readonly res: http.ServerResponse,
    readonly record: R,
    serverClosing: () => boolean,
    private readonly responseHeaders: Record<string, string>,
  ) {
    res.on('close', () => {
      this.closed = true;
      record.completed = res.writableFinished;
      if (!res.writableFinished && !this.serverKilled && !serverClosing()) record.aborted = true;
      for (const w of this.closeWaiters.splice(0)) w();
    });
  }

  /** Resolves after ms (true), or early (false) when the connection closes. */
  wait(ms: number): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (ms <= 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(!this.closed), ms);
      this.closeWaiters.push(() => {
        clearTimeout(t);
        resolve(false);
      });
    });
  }

  /** Resolves when the connection closes. */
  untilClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  writeHead(status: number, headers: Record<string, string>): void {
    if (this.closed || this.res.headersSent) return;
    this.record.status = status;
    this.res.writeHead(status, { ...this.responseHeaders, ...headers });
  }

  sendJson(status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
    if (this.closed) return;
    const payload = Buffer.from(JSON.stringify(body));
    this.writeHead(status, { 'content-type': 'application/json', 'content-length': String(payload.length), ...extraHeaders });
    this.res.end(payload);
  }

  /** Sends the 200 headers of an SSE stream right away. */
  startSse(): void {
    this.writeHead(200, SSE_HEADERS);
    this.res.flushHeaders();
  }

  /**
   * Flushes what was written, gives the client a moment to read it, then kills the socket: an RST
   * ('rst', default) or a plain close without finishing the body ('close').
   */
  async kill(mode: 'rst' | 'close' = 'rst'): Promise<void> {
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      if (this.res.headersSent) this.res.write('', () => resolve());
      else resolve();
    });
    await this.wait(25);
    if (this.closed) return;
    this.serverKilled = true;
    const socket = this.res.socket;
    if (!socket) return;
    if (mode === 'rst') socket.resetAndDestroy();
    else socket.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

export interface FakeHttpServerOptions {
  host: string;
  /** Default 0 (any free port). */
  port?: number;
  /** Answers one request; `serverClosing()` is true once close() was called. */
  handle: (req: http.IncomingMessage, res: http.ServerResponse, serverClosing: () => boolean) => Promise<void>;
  /** The 500 answer when `handle` throws before the headers were sent (after, the socket is destroyed). */
  crashReply: (err: unknown) => { headers: Record<string, string>; body: string };
}

export interface FakeHttpServer {
  readonly port: number;
  /** Stops the server and destroys every open socket. */
  close(): Promise<void>;
}

export async function startFakeHttpServer(options: FakeHttpServerOptions): Promise<FakeHttpServer> {
  const sockets = new Set<Socket>();
  let closing = false;
  const serverClosing = (): boolean => closing;
  const server = http.createServer((req, res) => {
    options.handle(req, res, serverClosing).catch((err: unknown) => {
      if (!res.headersSent && !res.destroyed) {
        const reply = options.crashReply(err);
        res.writeHead(500, { 'content-type': 'application/json', ...reply.headers });
        res.end(reply.body);
      } else {
        res.destroy();
      }
    });
  });
  // Long keep-alive so pooled client sockets are not closed under a racing request.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    async close(): Promise<void> {
      if (closing) return;
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await closed;
    },
  };
}
