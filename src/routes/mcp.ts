/**
 * `/mcp`: the memory tools over MCP's Streamable HTTP transport (the official SDK), behind the
 * same request id, log, authentication and rate limit as every other endpoint (`app.ts`).
 *
 * Stateless: each POST gets its own server and transport, built for the authenticated caller and
 * closed when the response closes. Nothing is kept between requests, so there is no session table
 * to bound, expire or share between instances, and every request is authenticated and rate
 * limited on its own. The tools answer at once, so responses are plain JSON
 * (`enableJsonResponse`), which the request log and any proxy in front handle like any other
 * response. Without sessions there is no server-to-client stream and nothing to end: GET and
 * DELETE answer 405, as the SDK's stateless examples do.
 *
 * The body is read here (within the limit, nesting at most 400 levels) and handed to the transport
 * parsed; the transport checks the rest (Accept, Content-Type, JSON-RPC shape), so protocol-level
 * refusals come back as JSON-RPC errors that MCP clients understand. A JSON-RPC batch (an array)
 * is refused: MCP dropped batching (spec 2025-06-18), and a batch of a hundred tool calls would
 * otherwise pass the rate limit as one request.
 */
import type { RequestHandler } from 'express';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { PayloadTooLargeError } from '../errors';
import { readBody } from '../http/read-body';
import type { Logger } from '../logger';
import { nestsDeeperThan } from '../util/json-spans';
import { MAX_BODY_DEPTH } from './chat';
import { createMemoryMcpServer } from '../mcp/server';
import type { MemoryService } from '../memory/types';

/** Largest MCP request body (a tool call's arguments; `add_memory` messages are the big ones). */
export const MCP_BODY_LIMIT_BYTES = 1024 * 1024;

export interface McpRouteOptions {
  memory: MemoryService;
  logger: Logger;
  version: string;
  defaults: { searchLimit: number; listLimit: number };
}

export interface McpRoutes {
  post: RequestHandler;
  /** GET and DELETE: no sessions, so no stream to open and none to end. */
  methodNotAllowed: RequestHandler;
}

const METHOD_NOT_ALLOWED = JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed.' }, id: null });

/** A JSON-RPC error answered before the transport sees the request. */
function rpcError(res: Parameters<RequestHandler>[1], status: number, code: number, message: string): void {
  res
    .status(status)
    .type('application/json')
    .send(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

/** The request's JSON, or undefined after answering why there is none. */
async function readRpcBody(req: Parameters<RequestHandler>[0], res: Parameters<RequestHandler>[1]): Promise<unknown> {
  let raw: Buffer;
  try {
    raw = await readBody(req, MCP_BODY_LIMIT_BYTES);
  } catch (err) {
    if (err instanceof PayloadTooLargeError) rpcError(res, 413, -32000, `Request body exceeds ${MCP_BODY_LIMIT_BYTES} bytes`);
    else throw err;
    return undefined;
  }
  let parsed: unknown;
  try {
    if (nestsDeeperThan(raw, MAX_BODY_DEPTH)) throw new Error('too deep');
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    rpcError(res, 400, -32700, 'Parse error: Invalid JSON');
    return undefined;
  }
  if (Array.isArray(parsed)) {
    rpcError(res, 400, -32600, 'Invalid Request: batch requests are not supported; send one JSON-RPC message per request');
    return undefined;
  }
  return parsed;
}

export function mcpRoutes(options: McpRouteOptions): McpRoutes {
  const { memory, logger } = options;
  return {
    post: async (req, res) => {
      const caller = req.caller;
      if (!caller) throw new Error('authenticate must run before the MCP route');
      const body = await readRpcBody(req, res);
      if (body === undefined) return;
      const server = createMemoryMcpServer({
        memory,
        caller,
        logger,
        version: options.version,
        defaults: options.defaults,
        requestId: req.id,
      });
      // No `sessionIdGenerator`: stateless mode.
      const transport = new StreamableHTTPServerTransport({ enableJsonResponse: true, maxRequestBodySize: MCP_BODY_LIMIT_BYTES });
      transport.onerror = (err) => logger.debug('mcp request refused', { request_id: req.id, caller: caller.id, reason: err.message });
      // Closing the server closes its transport too.
      res.once('close', () => {
        server.close().catch((err: unknown) => logger.debug('mcp close failed', { request_id: req.id, err }));
      });
      await server.connect(transport);
      await transport.handleRequest(req, res, body);
    },
    methodNotAllowed: (_req, res) => {
      res.status(405).set('Allow', 'POST').type('application/json').send(METHOD_NOT_ALLOWED);
    },
  };
}
