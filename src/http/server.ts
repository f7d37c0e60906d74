/**
 * The HTTP server the app runs on, with the limits that keep slow or stalled clients from holding
 * sockets: headers within 60 s, the whole request (headers and body) within `requestTimeoutMs`
 * (5 min by default; 408 past it). These bound the request side only: once a request has arrived,
 * its answer may stream for as long as the model takes.
 */
import http from 'node:http';

export interface ServerLimits {
  /** The whole request must arrive within this (default 5 min). */
  requestTimeoutMs?: number;
  /** How often Node checks those deadlines (default 5 s; tests shorten it). */
  checkIntervalMs?: number;
}

export function createHttpServer(listener: http.RequestListener, limits: ServerLimits = {}): http.Server {
  const requestTimeout = limits.requestTimeoutMs ?? 300_000;
  const server = http.createServer(
    { requestTimeout, headersTimeout: Math.min(60_000, requestTimeout), connectionsCheckingInterval: limits.checkIntervalMs ?? 5_000 },
    listener,
  );
  server.keepAliveTimeout = 65_000;
  return server;
}
