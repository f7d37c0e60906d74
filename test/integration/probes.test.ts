/**
 * The orchestrator's probes: `/livez` and `/readyz` answer without a token and outside the
 * per-caller limits, never call memory, pass the Host check a kubelet's probe meets, and `/readyz`
 * turns 503 as soon as the real process begins shutting down, while a slow request still drains.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { tokenAuthenticator } from '../../src/http/authenticate';
import { UnavailableMemoryService } from '../../src/memory/unavailable';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { SLOW_SSE_EVENTS, startSlowSseUpstream } from '../fakes/slow-sse-upstream';
import { buildTestApp, type TestApp } from '../helpers/app';
import { listeningPort, startProxyProcess, type ProxyProcess } from '../helpers/process';
import { TEST_ANTHROPIC_KEY, TEST_AUTH_TOKEN, TEST_OPENAI_KEY } from '../helpers/secrets';

let fake: FakeUpstream;
beforeAll(async () => {
  fake = await startFakeUpstream();
});
afterAll(() => fake.close());

const auth = `Bearer ${TEST_AUTH_TOKEN}`;

describe('with AUTH_TOKEN set and no memory engine', () => {
  let t: TestApp;
  beforeEach(async () => {
    t = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
      RATE_LIMIT_HEALTH: '2',
      RATE_LIMIT_FAILED_AUTH: '2',
    });
  });
  afterEach(() => t.close());

  it('answers /livez and /readyz without a token, saying nothing else', async () => {
    // The control: the same app refuses /health without the token.
    await request(t.app).get('/health').expect(401);
    const live = await request(t.app).get('/livez').expect(200);
    expect(live.body).toEqual({ status: 'alive' });
    const ready = await request(t.app).get('/readyz').expect(200);
    expect(ready.body).toEqual({ status: 'ready' });
    expect(ready.headers['cache-control']).toBe('no-store');
    expect(ready.headers['x-request-id']).toEqual(expect.any(String));
  });

  it('stays ready while memory is unavailable (chats pass through without it)', async () => {
    const health = await request(t.app).get('/health').set('Authorization', auth).expect(200);
    expect(health.body).toMatchObject({ status: 'degraded', memory_service_available: false });
    const ready = await request(t.app).get('/readyz').expect(200);
    expect(ready.body).toEqual({ status: 'ready' });
  });

  it('does not count the probes against the caller, nor against failed logins', async () => {
    for (let i = 0; i < 5; i += 1) {
      for (const probe of ['/livez', '/readyz']) {
        const res = await request(t.app).get(probe).set('Authorization', auth).expect(200);
        expect(res.headers['x-ratelimit-limit']).toBeUndefined();
      }
    }
    // The caller's /health budget (2 a minute) is untouched by the ten probes.
    const health = await request(t.app).get('/health').set('Authorization', auth).expect(200);
    expect(health.headers['x-ratelimit-remaining']).toBe('1');
    // A wrong token on a probe is not a refused credential: the address is not locked out.
    for (let i = 0; i < 5; i += 1) await request(t.app).get('/readyz').set('Authorization', 'Bearer wrong-token-123').expect(200);
    await request(t.app).get('/search').set('Authorization', 'Bearer wrong-token-123').expect(401);
  });

  it('labels the probes in the request metrics', async () => {
    await request(t.app).get('/livez').expect(200);
    await request(t.app).get('/readyz').expect(200);
    const metrics = await request(t.app).get('/metrics').set('Authorization', auth).expect(200);
    expect(metrics.text).toMatch(/proxy_http_requests_total\{api="proxy",route="\/livez",method="GET",status="200"\} 1/);
    expect(metrics.text).toMatch(/proxy_http_requests_total\{api="proxy",route="\/readyz",method="GET",status="200"\} 1/);
  });
});

it('answers the probes without calling memory (a hung engine does not hold them)', async () => {
  let calls = 0;
  const t = await buildTestApp(
    { UPSTREAM_BASE_URL: fake.url, AUTH_TOKEN: TEST_AUTH_TOKEN, OPENAI_API_KEY: TEST_OPENAI_KEY },
    {
      memory: (config) => {
        const memory = new UnavailableMemoryService(config.memory.backend, 'test');
        memory.available = () => {
          calls += 1;
          return new Promise<boolean>(() => undefined);
        };
        return memory;
      },
    },
  );
  try {
    await request(t.app).get('/livez').timeout(2000).expect(200);
    await request(t.app).get('/readyz').timeout(2000).expect(200);
    expect(calls).toBe(0);
  } finally {
    await t.close();
  }
});

describe('readiness and the upstream key', () => {
  it('is not ready when callers authenticate and the proxy has no upstream key', async () => {
    // A key registry without OPENAI_API_KEY starts (AUTH_TOKEN without it is a configuration error).
    const t = await buildTestApp({ UPSTREAM_BASE_URL: fake.url }, { authenticator: tokenAuthenticator(TEST_AUTH_TOKEN) });
    try {
      const res = await request(t.app).get('/readyz').expect(503);
      expect(res.body).toEqual({ status: 'not_ready', reasons: ['no_upstream_key'] });
      await request(t.app).get('/livez').expect(200);
    } finally {
      await t.close();
    }
  });

  it("is ready with an Anthropic key only, and in development mode (the caller's own key goes upstream)", async () => {
    const anthropicOnly = await buildTestApp(
      { UPSTREAM_BASE_URL: fake.url, ANTHROPIC_API_KEY: TEST_ANTHROPIC_KEY },
      { authenticator: tokenAuthenticator(TEST_AUTH_TOKEN) },
    );
    const development = await buildTestApp({ UPSTREAM_BASE_URL: fake.url });
    try {
      await request(anthropicOnly.app).get('/readyz').expect(200);
      await request(development.app).get('/readyz').expect(200);
    } finally {
      await anthropicOnly.close();
      await development.close();
    }
  });
});

describe("a kubelet's probe (Host: <pod-ip>:<port>)", () => {
  const podHost = '10.244.1.7:8000';

  it('passes with SERVER_HOST=0.0.0.0 and ALLOWED_HOSTS unset', async () => {
    const t = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      SERVER_HOST: '0.0.0.0',
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
    });
    try {
      await request(t.app).get('/livez').set('Host', podHost).expect(200);
      await request(t.app).get('/readyz').set('Host', podHost).expect(200);
    } finally {
      await t.close();
    }
  });

  it('is refused by ALLOWED_HOSTS unless the probe sends a Host it names', async () => {
    const t = await buildTestApp({
      UPSTREAM_BASE_URL: fake.url,
      SERVER_HOST: '0.0.0.0',
      ALLOWED_HOSTS: 'mem0-proxy',
      AUTH_TOKEN: TEST_AUTH_TOKEN,
      OPENAI_API_KEY: TEST_OPENAI_KEY,
    });
    try {
      await request(t.app).get('/readyz').set('Host', podHost).expect(403);
      await request(t.app).get('/readyz').set('Host', 'mem0-proxy').expect(200);
      await request(t.app).get('/livez').set('Host', 'mem0-proxy:8000').expect(200);
    } finally {
      await t.close();
    }
  });
});

// ---------------------------------------------------------------- the real process

/**
 * A request whose head is sent now but completed only by `finish()`: its connection is open and
 * busy (not idle, so shutdown does not close it) when shutdown begins, and the request is handled
 * after. Resolves with the status line and the body.
 */
function heldRequest(port: number, target: string): { finish(): Promise<{ status: number; body: string }> } {
  const socket = net.connect(port, '127.0.0.1');
  socket.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n`);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<string>((resolve, reject) => {
    socket.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.once('error', reject);
  });
  return {
    finish: async () => {
      socket.write('\r\n');
      const raw = await ended;
      socket.destroy();
      const [head = '', body = ''] = raw.split('\r\n\r\n');
      return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), body };
    },
  };
}

describe('the running process on SIGTERM', () => {
  let dir: string;
  let proc: ProxyProcess | undefined;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'probes-'));
  });
  afterEach(() => {
    if (proc && proc.child.exitCode === null) proc.child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reports not ready (shutting_down) while a slow request is still in flight, then exits 0', async () => {
    const upstream = await startSlowSseUpstream();
    try {
      proc = startProxyProcess(
        {
          SERVER_HOST: '127.0.0.1',
          SERVER_PORT: '0',
          DATA_DIR: path.join(dir, 'data'),
          UPSTREAM_BASE_URL: upstream.url,
          AUTH_TOKEN: TEST_AUTH_TOKEN,
          OPENAI_API_KEY: TEST_OPENAI_KEY,
        },
        dir,
      );
      const port = await listeningPort(proc);
      const before = await fetch(`http://127.0.0.1:${port}/readyz`);
      expect({ status: before.status, body: await before.json() }).toEqual({ status: 200, body: { status: 'ready' } });

      // A slow stream through the proxy, in flight across the shutdown.
      const res = await fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { authorization: auth } });
      expect(res.status).toBe(200);
      const reader = res.body?.getReader();
      if (!reader) throw new Error('no body');
      const decoder = new TextDecoder();
      let text = decoder.decode((await reader.read()).value, { stream: true });
      let streamDone = false;
      const rest = (async () => {
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) break;
          text += decoder.decode(chunk.value, { stream: true });
        }
        streamDone = true;
      })();

      const probe = heldRequest(port, '/readyz');
      await new Promise((r) => setTimeout(r, 100));
      proc.child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 300));
      const during = await probe.finish();
      expect(streamDone).toBe(false);
      expect(during.status).toBe(503);
      expect(JSON.parse(during.body)).toEqual({ status: 'not_ready', reasons: ['shutting_down'] });

      await rest;
      for (let n = 1; n <= SLOW_SSE_EVENTS; n += 1) expect(text).toContain(`data: {"n":${n}}`);
      expect(await proc.exited).toBe('0');
    } finally {
      await upstream.close();
    }
  }, 40_000);
});
