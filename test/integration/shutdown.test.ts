/**
 * Graceful shutdown of the real process: on SIGTERM with a slow streamed upstream response in
 * flight, it stops accepting connections, lets the stream finish, and exits 0 promptly.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { SLOW_SSE_EVENTS, startSlowSseUpstream } from '../fakes/slow-sse-upstream';
import { BUILT_ENTRY } from '../helpers/built';

function connectRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}

let dir: string;
let child: ChildProcessWithoutNullStreams | undefined;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shutdown-'));
});
afterEach(() => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

it('on SIGTERM stops accepting, finishes the in-flight stream, and exits 0', async () => {
  const upstream = await startSlowSseUpstream();
  try {
    const proc = spawn(process.execPath, [BUILT_ENTRY], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: dir,
        MEM0_TELEMETRY: 'false',
        SERVER_HOST: '127.0.0.1',
        SERVER_PORT: '0',
        DATA_DIR: path.join(dir, 'data'),
        UPSTREAM_BASE_URL: upstream.url,
      },
    });
    child = proc;
    const out: string[] = [];
    proc.stdout.on('data', (c: Buffer) => out.push(c.toString()));
    proc.stderr.on('data', (c: Buffer) => out.push(c.toString()));
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));

    let port: number | undefined;
    const until = Date.now() + 20_000;
    while (port === undefined && Date.now() < until) {
      const line = out
        .join('')
        .split('\n')
        .find((l) => l.includes('listening'));
      const found = line ? /"port":(\d+)/.exec(line)?.[1] : undefined;
      if (found) port = Number(found);
      else await new Promise((r) => setTimeout(r, 50));
    }
    if (port === undefined) throw new Error(`not listening: ${out.join('')}`);

    // A client with keep-alive (fetch's default), reading a slow stream through the proxy.
    const res = await fetch(`http://127.0.0.1:${port}/v1/models`);
    expect(res.status).toBe(200);
    const reader = res.body?.getReader();
    if (!reader) throw new Error('no body');
    const decoder = new TextDecoder();
    let text = '';
    const first = await reader.read();
    text += decoder.decode(first.value, { stream: true });

    proc.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    expect(await connectRefused(port)).toBe(true);
    expect(proc.exitCode).toBeNull();

    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += decoder.decode(chunk.value, { stream: true });
    }
    const streamEnded = Date.now();
    for (let n = 1; n <= SLOW_SSE_EVENTS; n++) expect(text).toContain(`data: {"n":${n}}`);
    expect(text).toContain('data: [DONE]');

    expect(await exited).toBe(0);
    // Promptly: not after the 10 s grace period (the finished keep-alive socket must not hold it).
    expect(Date.now() - streamEnded).toBeLessThan(3000);
    expect(out.join('')).toContain('stopped');
  } finally {
    await upstream.close();
  }
}, 30_000);
