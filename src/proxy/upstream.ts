/**
 * Forwarding to the upstream with http-proxy.
 *
 * Requests stream through (or carry a body the chat route rewrote); responses, streamed ones
 * included, are piped back chunk by chunk as they arrive. This module owns what crosses the
 * boundary: which headers leave (no hop-by-hop, no `X-Mem0-*`, the right credentials), the
 * response deadline (504), unreachable upstreams (502), and aborting the upstream request when the
 * client goes away.
 */
import http from 'node:http';
import https from 'node:https';
import { PassThrough, Transform, type TransformCallback, type Readable } from 'node:stream';
import type { NextFunction, Request, Response } from 'express';
import httpProxy from 'http-proxy';
import { BadGatewayError, GatewayTimeoutError, PayloadTooLargeError, sendError } from '../errors';
import type { Logger } from '../logger';
import type { Metrics } from '../metrics';
import { resolveUpstreamPath } from './target';

/** Hop-by-hop headers (RFC 9110 §7.6.1) plus ones that only make sense on one connection. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect'];

export interface UpstreamOptions {
  baseUrl: string;
  timeoutMs: number;
  maxBodyBytes: number;
  /** Sent upstream as `Authorization: Bearer …` when set. */
  apiKey: string | undefined;
  /** Forward the caller's own `Authorization` when there is no `apiKey` (development mode only). */
  forwardCallerAuthorization: boolean;
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
}

interface Exchange {
  onProxyReq(proxyReq: http.ClientRequest): void;
  onProxyRes(upstreamRes: http.IncomingMessage): void;
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

function bodyStream(body: Buffer): Readable {
  // A one-shot readable over the buffer; http-proxy pipes it into the upstream request.
  const t = new PassThrough();
  t.end(body);
  return t;
}

export class Upstream {
  private readonly proxy: httpProxy;
  private readonly target: { protocol: string; hostname: string; host: string; port: string; basePath: string };
  private readonly agent: http.Agent;
  /** Per-request hooks, found by the shared proxy's events (one listener each, whatever the concurrency). */
  private readonly exchanges = new WeakMap<http.IncomingMessage, Exchange>();

  constructor(private readonly options: UpstreamOptions) {
    const base = new URL(options.baseUrl);
    this.target = {
      protocol: base.protocol,
      hostname: base.hostname,
      host: base.hostname,
      port: base.port || (base.protocol === 'https:' ? '443' : '80'),
      basePath: base.pathname,
    };
    const agentOptions = { keepAlive: true, maxSockets: 1024, maxFreeSockets: 64, scheduling: 'lifo' as const };
    this.agent = base.protocol === 'https:' ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
    this.proxy = httpProxy.createProxyServer({ changeOrigin: true, xfwd: false, ignorePath: true, agent: this.agent });
    this.proxy.on('proxyRes', (proxyRes, req) => {
      // The response keeps our X-Request-ID; the upstream's own id stays visible under another name.
      const upstreamId = proxyRes.headers['x-request-id'];
      delete proxyRes.headers['x-request-id'];
      if (upstreamId !== undefined) proxyRes.headers['x-upstream-request-id'] = upstreamId;
      stripHopByHop(proxyRes.headers, ['transfer-encoding', 'connection']);
      this.exchanges.get(req)?.onProxyRes(proxyRes);
    });
    this.proxy.on('proxyReq', (proxyReq, req) => this.exchanges.get(req)?.onProxyReq(proxyReq));
    // Errors are handled per request in `forward`; this listener only keeps an unexpected one
    // from crashing the process.
    this.proxy.on('error', (err) => options.logger.error('proxy error', { err }));
  }

  /** The upstream path for this request, validated (see `target.ts`). */
  resolvePath(req: Request, mountPath = '/v1'): string {
    return resolveUpstreamPath(this.target.basePath, mountPath, req.originalUrl);
  }

  /**
   * Forwards `req` to the upstream and pipes the answer into `res`.
   * Errors before the response starts become 502/504/413 in OpenAI's shape; after it started the
   * client connection is cut, which the SDKs report as a broken stream.
   */
  forward(req: Request, res: Response, next: NextFunction, opts: ForwardOptions = {}): void {
    let path: string;
    try {
      path = this.resolvePath(req);
    } catch (err) {
      next(err);
      return;
    }
    const { logger, metrics } = this.options;
    const declaredLength = Number(req.headers['content-length'] ?? 0);
    if (!opts.body && declaredLength > this.options.maxBodyBytes) {
      next(new PayloadTooLargeError(`Request body exceeds ${this.options.maxBodyBytes} bytes`));
      return;
    }

    // Read before prepareHeaders drops Transfer-Encoding as hop-by-hop.
    const unknownLength = req.headers['content-length'] === undefined && req.headers['transfer-encoding'] !== undefined;
    this.prepareHeaders(req, opts.body);
    const started = process.hrtime.bigint();
    let timedOut = false;
    let ended = false;
    let proxyReq: http.ClientRequest | undefined;
    let clientGone = false;
    const finish = (completed: boolean): void => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      opts.onEnd?.(completed);
    };
    const fail = (err: Error & { code?: string }): void => {
      clearTimeout(timer);
      if (clientGone) {
        finish(false);
        return;
      }
      const reason = timedOut ? 'timeout' : err instanceof PayloadTooLargeError ? 'body_too_large' : 'unreachable';
      metrics.upstreamErrors.inc({ reason });
      if (!res.headersSent) {
        metrics.upstreamDuration.observe({ outcome: timedOut ? 'timeout' : 'error' }, Number(process.hrtime.bigint() - started) / 1e9);
      }
      logger.warn('upstream request failed', { request_id: req.id, reason, code: err.code, error: err.message });
      proxyReq?.destroy();
      finish(false);
      if (err instanceof PayloadTooLargeError) sendError(res, req.originalUrl, err);
      else if (timedOut) sendError(res, req.originalUrl, new GatewayTimeoutError('The upstream did not answer in time'));
      else sendError(res, req.originalUrl, new BadGatewayError('The upstream could not be reached'));
    };

    // Deadline for the response headers, then an idle deadline while the body streams.
    const onTimeout = (): void => {
      timedOut = true;
      if (res.headersSent) {
        metrics.upstreamErrors.inc({ reason: 'timeout' });
        logger.warn('upstream stream idle past the timeout', { request_id: req.id });
        proxyReq?.destroy();
        res.destroy();
        finish(false);
      } else {
        fail(new Error('upstream timeout'));
      }
    };
    let timer = setTimeout(onTimeout, this.options.timeoutMs);

    let source: Readable | undefined;
    if (opts.body) {
      source = bodyStream(opts.body);
    } else if (unknownLength) {
      // A chunked body of unknown size: count it on the way through.
      const limit = new BodyLimit(this.options.maxBodyBytes);
      limit.on('error', (err) => fail(err));
      req.pipe(limit);
      source = limit;
    }

    res.once('close', () => {
      if (!res.writableFinished) {
        clientGone = true;
        if (proxyReq && !proxyReq.destroyed) {
          metrics.upstreamErrors.inc({ reason: 'client_abort' });
          proxyReq.destroy();
        }
        finish(false);
      }
    });

    this.exchanges.set(req, {
      onProxyReq: (pr) => {
        proxyReq = pr;
        if (clientGone) pr.destroy();
      },
      onProxyRes: (upstreamRes) => {
        metrics.upstreamDuration.observe(
          { outcome: `${Math.floor((upstreamRes.statusCode ?? 500) / 100)}xx` },
          Number(process.hrtime.bigint() - started) / 1e9,
        );
        const rearm = (): void => {
          clearTimeout(timer);
          timer = setTimeout(onTimeout, this.options.timeoutMs);
        };
        rearm();
        upstreamRes.on('data', rearm);
        upstreamRes.once('end', () => clearTimeout(timer));
        upstreamRes.once('aborted', () => {
          // The upstream cut the response short: make sure the client sees a broken response too.
          metrics.upstreamErrors.inc({ reason: 'reset' });
          res.destroy();
          finish(false);
        });
        res.once('finish', () => finish(!upstreamRes.readableAborted));
        opts.onResponse?.(upstreamRes);
      },
    });

    this.proxy.web(
      req,
      res,
      {
        target: { ...this.target, path } as unknown as httpProxy.ProxyTargetUrl,
        ...(source ? { buffer: source } : {}),
      },
      (err) => fail(err as Error & { code?: string }),
    );
  }

  /** Rewrites the request headers in place before http-proxy copies them. */
  private prepareHeaders(req: Request, body: Buffer | undefined): void {
    const headers = req.headers;
    stripHopByHop(headers, []);
    for (const name of Object.keys(headers)) if (name.startsWith('x-mem0-')) delete headers[name];
    delete headers['x-forwarded-for'];
    delete headers['x-forwarded-host'];
    delete headers['x-forwarded-proto'];
    delete headers.forwarded;
    if (this.options.apiKey !== undefined) headers.authorization = `Bearer ${this.options.apiKey}`;
    else if (!this.options.forwardCallerAuthorization) delete headers.authorization;
    if (body) {
      headers['content-length'] = String(body.length);
      delete headers['content-encoding'];
    }
  }

  close(): void {
    this.proxy.close();
    this.agent.destroy();
  }
}

/** Removes hop-by-hop headers and those named in `Connection`, except the ones in `keep`. */
function stripHopByHop(headers: http.IncomingHttpHeaders, keep: readonly string[]): void {
  const connection = headers.connection;
  if (typeof connection === 'string') {
    for (const token of connection.split(',')) {
      const name = token.trim().toLowerCase();
      if (name && !keep.includes(name)) delete headers[name];
    }
  }
  for (const name of HOP_BY_HOP) if (!keep.includes(name)) delete headers[name];
}
