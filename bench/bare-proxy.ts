/**
 * The honest minimal baseline for the proxy benchmark: a bare `node:http` pass-through proxy.
 * No auth, no rate limits, no body parsing, no logging: it copies the request headers (minus
 * hop-by-hop ones), pipes the request body upstream over a keep-alive agent, and pipes the
 * response (status, headers, body - streams included) back.
 *
 *   node --import tsx bench/bare-proxy.ts --upstream=http://127.0.0.1:PORT/v1 [--port=0]
 *
 * Incoming `/v1/<rest>` goes to `<upstream>/<rest>`. Prints `BENCH_READY {"port":PORT}`.
 */
import * as http from 'node:http';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

function copyHeaders(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  }
  return out;
}

function arg(name: string): string | undefined {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  return hit?.slice(name.length + 3);
}

function main(): void {
  const upstreamArg = arg('upstream');
  if (!upstreamArg) throw new Error('--upstream=<base url ending in /v1> is required');
  const upstream = new URL(upstreamArg.replace(/\/+$/, ''));
  const basePath = upstream.pathname; // e.g. /v1
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 256, keepAliveMsecs: 30_000 });

  const server = http.createServer((req, res) => {
    const incoming = req.url ?? '/';
    const rest = incoming.startsWith('/v1') ? incoming.slice(3) : incoming;
    const headers = copyHeaders(req.headers);
    headers['host'] = upstream.host;
    const up = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: basePath + rest, headers, agent },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, copyHeaders(upRes.headers));
        upRes.pipe(res);
        upRes.on('error', () => res.destroy());
      },
    );
    up.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end('{"error":{"message":"bad gateway","type":"server_error","param":null,"code":null}}');
      } else {
        res.destroy();
      }
    });
    // The caller went away: stop the upstream request too.
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  });
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.listen(Number(arg('port') ?? 0), '127.0.0.1', () => {
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : 0;
    process.stdout.write(`BENCH_READY ${JSON.stringify({ port })}\n`);
  });
  const stop = (): void => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    agent.destroy();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main();
