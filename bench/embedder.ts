/**
 * Table "embedder" (`npm run bench -- --only=embedder`): one embedding request of a recall (the
 * query and two entity texts, 1536 dimensions) through mem0's OpenAI embedder (the openai SDK v4
 * on node-fetch, `encoding_format: "float"`) and through the engine's own client
 * (src/memory/http-embedder.ts: node:http, base64), against the fake upstream in its own process.
 * Sequential calls, the two clients alternating in rounds; CPU is this process's own time per
 * call (the fake's is not in it), wall is the whole round trip on loopback.
 */
import { HttpEmbedder } from '../src/memory/http-embedder';
import { fmt, printTable, startFakeUpstreamChild, stopAllChildren, summarize } from './lib';

interface Client {
  name: string;
  embedBatch(texts: string[]): Promise<number[][]>;
}

const TEXTS = ['Where does Maria Lopez live these days, question 12?', 'Maria Lopez', 'question'];
const ROUNDS = 4;
const CALLS_PER_ROUND = 1000;
const WARMUP = 300;

export async function runEmbedderBench(): Promise<{ bars: Array<{ name: string; pass: boolean }> }> {
  process.env.MEM0_TELEMETRY = 'false';
  const { OpenAIEmbedder } = require('mem0ai/oss') as typeof import('mem0ai/oss');
  const fake = await startFakeUpstreamChild();
  const ours = new HttpEmbedder({
    baseURL: fake.url,
    apiKey: 'bench',
    model: 'text-embedding-3-small',
    dimensions: 1536,
    timeoutMs: 10_000,
  });
  const mem0 = new OpenAIEmbedder({ apiKey: 'bench', baseURL: fake.url, model: 'text-embedding-3-small', embeddingDims: 1536 });
  const clients: Client[] = [
    { name: "mem0's (openai v4 + node-fetch, float)", embedBatch: (t) => mem0.embedBatch(t) },
    { name: 'ours (node:http, base64)', embedBatch: (t) => ours.embedBatch(t) },
  ];
  const wall = new Map<string, number[]>();
  const cpu = new Map<string, number[]>();
  try {
    // Both give the same vectors (float32 precision) before anything is timed.
    const [a, b] = await Promise.all(clients.map((c) => c.embedBatch(TEXTS)));
    const same = a?.every((v, i) => v.every((x, j) => Math.fround(x) === b?.[i]?.[j]));
    for (const c of clients) for (let i = 0; i < WARMUP; i++) await c.embedBatch(TEXTS);
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of clients) {
        const startCpu = process.cpuUsage();
        const started = performance.now();
        for (let i = 0; i < CALLS_PER_ROUND; i++) await c.embedBatch(TEXTS);
        const used = process.cpuUsage(startCpu);
        (wall.get(c.name) ?? wall.set(c.name, []).get(c.name))?.push((performance.now() - started) / CALLS_PER_ROUND);
        (cpu.get(c.name) ?? cpu.set(c.name, []).get(c.name))?.push((used.user + used.system) / 1000 / CALLS_PER_ROUND);
      }
    }
    printTable(
      `Embedding client: one recall's request (${TEXTS.length} texts, 1536 dims) to the fake upstream, ${ROUNDS} rounds of ${CALLS_PER_ROUND} calls each, alternating`,
      ['client', 'wall ms/call (median round)', 'CPU ms/call (median round)', 'CPU rounds min-max'],
      clients.map((c) => {
        const w = summarize(wall.get(c.name) ?? []);
        const u = cpu.get(c.name) ?? [];
        return [c.name, fmt(w.p50, 3), fmt(summarize(u).p50, 3), `${fmt(Math.min(...u), 3)}-${fmt(Math.max(...u), 3)}`];
      }),
    );
    console.log(`same vectors from both clients (at float32 precision): ${same ? 'yes' : 'NO'}`);
    return { bars: [{ name: 'embedder: same vectors from both clients', pass: same === true }] };
  } finally {
    ours.close();
    await stopAllChildren();
  }
}
