/**
 * An upstream that answers every request with SLOW_SSE_EVENTS server-sent events
 * (`data: {"n":1}` ... then `data: [DONE]`), SLOW_SSE_INTERVAL_MS apart: a stream still in flight
 * for about 1.5 s, for the shutdown and readiness tests.
 */
import http from 'node:http';
import type net from 'node:net';

export const SLOW_SSE_EVENTS = 10;
export const SLOW_SSE_INTERVAL_MS = 150;

export async function startSlowSseUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    let sent = 0;
    const timer = setInterval(() => {
      sent += 1;
      res.write(`data: {"n":${sent}}\n\n`);
      if (sent === SLOW_SSE_EVENTS) {
        clearInterval(timer);
        res.end('data: [DONE]\n\n');
      }
    }, SLOW_SSE_INTERVAL_MS);
    res.on('close', () => clearInterval(timer));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
