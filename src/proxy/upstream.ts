/**
 * Forwarding to the upstream over node:http (a keep-alive agent per upstream).
 *
 * Requests stream through (or carry a body the chat route rewrote); responses, streamed ones
 * included, are piped back chunk by chunk as they arrive. This module owns what crosses the
 * boundary: which headers leave (no hop-by-hop, no `X-Mem0-*`, never the caller's credential
 * unless in development mode with no key of our own, the proxy's key in the header its API reads),
 * the response deadline (504), unreachable upstreams (502), and aborting the upstream request when
 * the client goes away. One instance per API (OpenAI's, Anthropic's).
 *
 * Why not http-proxy (which the first version used): on this path it cost about 0.3 ms of CPU per
 * request more than this module (docs/benchmarks.md), its last release is from 2020, it relies
 * on deprecated Node APIs (`util._extend`, `req.on('aborted')`, `ClientRequest.abort()`), and
 * its `proxyReq` hook can fire after headers were flushed on a reused keep-alive socket. What we
 * used it for (copy headers, pipe both ways) is a few lines over node:http.
 */
import http from 'node:http';
import https from 'node:https';
import { Transform, type TransformCallback } from 'node:stream';
import { BadGatewayError, GatewayTimeoutError, PayloadTooLargeError, ServiceUnavailableError, sendError } from '../errors';
import type { Logger } from '../logger';
import type { Next } from '../http/pipeline';
import type { Metrics } from '../metrics';
import type { Api } from '../http/api';
import { resolveUpstreamPath } from './target';

/** Hop-by-hop headers (RFC 9110 §7.6.1) plus `expect`, which only makes sense on one connection. */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
];
/** Headers describing the client's connection to us; the upstream learns nothing about callers. */
const CLIENT_ONLY = ['host', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'forwarded'];
/** Where callers put credentials (OpenAI, Anthropic, Azure OpenAI): never forwarded as they came. */
const CREDENTIALS = ['authorization', 'x-api-key', 'api-key'];

export interface UpstreamOptions {
  /** The API this upstream speaks: how the key is sent, and the error shape of refusals. */
  api: Api;
  baseUrl: string;
  timeoutMs: number;
  maxBodyBytes: number;
  /** The proxy's own key, sent as `Authorization: Bearer …` (OpenAI) or `x-api-key` (Anthropic). */
  apiKey: string | undefined;
  /**
   * With no `apiKey`: whether to forward the caller's own credential (development mode only;
   * OpenAI's `Authorization`, Anthropic's `x-api-key` or `Authorization`). Asked per request: a key
   * registry that appears on SIGHUP ends development mode.
   */
  forwardCallerCredential: () => boolean;
  /**
   * With no `apiKey` and no caller credential to forward: refuse with 503 and this message
   * instead of sending the upstream a request it can only refuse. Unset: forward without one.
   */
  missingKeyMessage?: string | undefined;
  logger: Logger;
  metrics: Metrics;
}

export interface ForwardOptions {
  /** A body to send instead of the request's own stream (already read, possibly rewritten). */
  body?: Buffer;
  /** Sees the upstream response (status, headers, data events) while it is piped to the client. */
  onResponse?: (upstreamRes: http.IncomingMessage) => void;
  /** Called once when the exchange ends: `completed` is true only when the whole response reached the client. */
  onEnd?: (completed: boolean) => void;
  /**
   * Called when the upstream response has ended, before the client's response is ended: the end
   * waits for the promise it returns (the chat routes commit the exchange to the save queue here,
   * so it is durable before the client sees the response end).
   */
  beforeEnd?: () => void | Promise<void>;
}

/** Passes chunks through one behind, and lets the last one go only once `beforeLast` settled. */
class HoldLastChunk extends Transform {
  private held: Buffer | undefined;
  constructor(private readonly beforeLast: () => Promise<void>) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const previous = this.held;
    this.held = chunk;
    cb(null, previous);
  }
  override _flush(cb: TransformCallback): void {
    void this.beforeLast().then(() => cb(null, this.held));
  }
}

/** Counts bytes of a streamed body and fails once it passes the limit. */
class BodyLimit extends Transform {
  private seen = 0;
  constructor(private readonly limit: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) cb(new PayloadTooLargeError(`Request body exceeds ${this.limit} bytes`));
    else cb(null, chunk);
  }
}

export class Upstream {
  private readonly client: typeof http | typeof https;
  private readonly target: { protocol: string; hostname: string; port: number; host: string; basePath: string };
  private readonly agent: http.Agent;

  constructor(private readonly options: UpstreamOptions) {
    const base = new URL(options.baseUrl);
    const defaultPort = base.protocol === 'https:' ? 443 : 80;
    this.target = {
      protocol: base.protocol,
      hostname: base.hostname.replace(/^\[|\]$/g, ''),
      port: base.port ? Number(base.port) : defaultPort,
      host: base.host,
      basePath: base.pathname,
    };
    this.client = base.protocol === 'https:' ? https : http;
    const agentOptions = { keepAlive: true, maxSockets: 1024, maxFreeSockets: 64, scheduling: 'lifo' as const };
    this.agent = base.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  }

  /** Why no request can be forwarded here (no key to send, see `missingKeyMessage`), or undefined. */
  unusable(): ServiceUnavailableError | undefined {
    const { apiKey, forwardCallerCredential, missingKeyMessage } = this.options;
    return apiKey === undefined && !forwardCallerCredential() && missingKeyMessage !== undefined
      ? new ServiceUnavailableError(missingKeyMessage)
      : undefined;
  }

  /** The upstream path for this request (its target starts with `/v1`), validated (see `target.ts`). */
  resolvePath(req: http.IncomingMessage): string {
    return resolveUpstreamPath(this.target.basePath, '/v1', req.url ?? '');
  }

  /**
   * Forwards `req` to the upstream and pipes the answer into `res`.
   * Errors before the response starts become 502/504/413 in OpenAI's shape; after it started the
   * client connection is cut, which the SDKs report as a broken stream.
   */
  forward(req: http.IncomingMessage, res: http.ServerResponse, next: Next, opts: ForwardOptions = {}): void {
    let path: string;
    try {
      path = this.resolvePath(req);
    } catch (err) {
      next(err);
      return;
    }
    const { logger, metrics, timeoutMs, maxBodyBytes, api } = this.options;
    const unusable = this.unusable();
    if (unusable) {
      next(unusable);
      return;
    }
    if (res.closed || res.destroyed) {
      // The client left while an earlier step (memory recall, a shared rate-limit store) ran:
      // nothing to send upstream, and the close event this module listens for has been and gone.
      metrics.upstreamErrors.inc({ reason: 'client_abort' });
      opts.onEnd?.(false);
      return;
    }
    if (!opts.body && Number(req.headers['content-length'] ?? 0) > maxBodyBytes) {
      next(new PayloadTooLargeError(`Request body exceeds ${maxBodyBytes} bytes`));
      return;
    }
    // Read before the headers are rewritten: Transfer-Encoding is hop-by-hop.
    const unknownLength = !opts.body && req.headers['content-length'] === undefined && req.headers['transfer-encoding'] !== undefined;

    const started = process.hrtime.bigint();
    setOverheadHeader(req, res, metrics, started);
    const elapsed = (): number => Number(process.hrtime.bigint() - started) / 1e9;
    let ended = false;
    let responded = false;
    let timedOut = false;

    const finish = (completed: boolean): void => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      opts.onEnd?.(completed);
    };

    const upstreamReq = this.client.request({
      protocol: this.target.protocol,
      hostname: this.target.hostname,
      port: this.target.port,
      method: req.method,
      path,
      headers: this.outgoingHeaders(req, opts.body),
      agent: this.agent,
    });

    /** Fails the exchange: a status if nothing was sent yet, a cut connection otherwise. */
    const fail = (reason: 'unreachable' | 'timeout' | 'body_too_large', err: Error & { code?: string }): void => {
      if (ended) return;
      metrics.upstreamErrors.inc({ reason });
      if (!responded) metrics.upstreamDuration.observe({ outcome: reason === 'timeout' ? 'timeout' : 'error' }, elapsed());
      logger.warn('upstream request failed', { request_id: req.id, reason, code: err.code, error: err.message });
      upstreamReq.destroy();
      finish(false);
      if (res.headersSent) res.destroy();
      else if (reason === 'body_too_large') sendError(res, api, err);
      else if (reason === 'timeout') sendError(res, api, new GatewayTimeoutError('The upstream did not answer in time'));
      else sendError(res, api, new BadGatewayError('The upstream could not be reached'));
    };

    // One timer: a deadline for the response headers, then an idle deadline while the body
    // streams (re-armed on every chunk with `refresh`, which allocates nothing).
    const timer = setTimeout(() => {
      timedOut = true;
      fail('timeout', new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);

    upstreamReq.on('error', (err: Error & { code?: string }) => {
      if (ended) return;
      fail(timedOut ? 'timeout' : 'unreachable', err);
    });

    res.once('close', () => {
      if (ended) return;
      if (!res.writableFinished) {
        // The client went away: stop the upstream work it asked for.
        metrics.upstreamErrors.inc({ reason: 'client_abort' });
        upstreamReq.destroy();
        finish(false);
      }
    });

    upstreamReq.on('response', (upstreamRes) => {
      responded = true;
      const status = upstreamRes.statusCode ?? 502;
      metrics.upstreamDuration.observe({ outcome: `${Math.floor(status / 100)}xx` }, elapsed());
      timer.refresh();
      upstreamRes.on('data', () => timer.refresh());
      upstreamRes.once('end', () => clearTimeout(timer));
      upstreamRes.once('aborted', () => {
        // The upstream cut the response short: the client must see a broken response too.
        if (ended) return;
        metrics.upstreamErrors.inc({ reason: 'reset' });
        finish(false);
        res.destroy();
      });
      upstreamRes.once('error', () => {
        if (ended) return;
        finish(false);
        res.destroy();
      });
      res.once('finish', () => finish(!upstreamRes.readableAborted));
      if (res.headersSent) {
        upstreamRes.resume();
        return;
      }
      res.writeHead(status, responseHeaders(upstreamRes));
      opts.onResponse?.(upstreamRes);
      const beforeEnd = opts.beforeEnd;
      if (!beforeEnd) {
        upstreamRes.pipe(res);
        return;
      }
      const runHook = (): Promise<void> => {
        try {
          return Promise.resolve(beforeEnd()).catch(() => undefined);
        } catch (err) {
          logger.error('before-end hook failed', { request_id: req.id, error: err instanceof Error ? err.message : String(err) });
          return Promise.resolve();
        }
      };
      if (upstreamRes.headers['content-length'] !== undefined) {
        // A sized body is complete for the client with its last byte, not with the end of the
        // response: its last chunk is what waits for the hook.
        upstreamRes.pipe(new HoldLastChunk(runHook)).pipe(res);
        return;
      }
      // A chunked body (SSE) ends with its terminating chunk: the end waits, the events do not.
      upstreamRes.pipe(res, { end: false });
      upstreamRes.once('end', () => {
        void runHook().then(() => res.end());
      });
    });

    if (opts.body) {
      upstreamReq.end(opts.body);
    } else if (unknownLength) {
      // A chunked body of unknown size: count it on the way through.
      const limit = new BodyLimit(maxBodyBytes);
      limit.once('error', (err) => fail('body_too_large', err));
      req.pipe(limit).pipe(upstreamReq);
    } else {
      req.pipe(upstreamReq);
    }
  }

  /**
   * The headers sent upstream: the caller's, minus hop-by-hop, client-only, `X-Mem0-*` and
   * credential headers, plus the proxy's key (or, in development mode without one, the caller's).
   */
  private outgoingHeaders(req: http.IncomingMessage, body: Buffer | undefined): http.OutgoingHttpHeaders {
    const headers: http.OutgoingHttpHeaders = { ...req.headers };
    stripHopByHop(headers, req.headers.connection);
    for (const name of CLIENT_ONLY) delete headers[name];
    for (const name of CREDENTIALS) delete headers[name];
    for (const name of Object.keys(headers)) if (name.startsWith('x-mem0-')) delete headers[name];
    headers.host = this.target.host;
    const { api, apiKey, forwardCallerCredential } = this.options;
    if (apiKey !== undefined) {
      if (api === 'anthropic') headers['x-api-key'] = apiKey;
      else headers.authorization = `Bearer ${apiKey}`;
    } else if (forwardCallerCredential()) {
      if (req.headers.authorization !== undefined) headers.authorization = req.headers.authorization;
      const callerKey = req.headers['x-api-key'];
      if (api === 'anthropic' && callerKey !== undefined) headers['x-api-key'] = callerKey;
    }
    if (body) {
      headers['content-length'] = String(body.length);
      delete headers['content-encoding'];
    }
    return headers;
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * `X-Mem0-Overhead-Ms`: what the proxy spent on this request before `now` (forwarding, or the
 * error that ended it), so callers can see the cost per request; observed once in /metrics.
 */
export function setOverheadHeader(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  metrics: Metrics,
  now = process.hrtime.bigint(),
): void {
  if (res.headersSent || res.hasHeader('x-mem0-overhead-ms')) return;
  const seconds = Number(now - req.receivedAt) / 1e9;
  res.setHeader('X-Mem0-Overhead-Ms', (seconds * 1000).toFixed(2));
  metrics.overhead.observe({ api: req.api ?? 'proxy', route: req.routeLabel ?? 'unmatched' }, seconds);
}

/** The upstream's response headers as the client gets them. */
function responseHeaders(upstreamRes: http.IncomingMessage): http.OutgoingHttpHeaders {
  const headers: http.OutgoingHttpHeaders = { ...upstreamRes.headers };
  stripHopByHop(headers, upstreamRes.headers.connection);
  // Our X-Request-ID stays; the upstream's own id stays visible under another name.
  const upstreamId = headers['x-request-id'];
  delete headers['x-request-id'];
  if (upstreamId !== undefined) headers['x-upstream-request-id'] = upstreamId;
  return headers;
}

/** Removes hop-by-hop headers and the ones named in `Connection`. */
function stripHopByHop(headers: http.OutgoingHttpHeaders, connection: string | undefined): void {
  if (connection) {
    for (const token of connection.split(',')) {
      const name = token.trim().toLowerCase();
      if (name) delete headers[name];
    }
  }
  for (const name of HOP_BY_HOP) delete headers[name];
}
