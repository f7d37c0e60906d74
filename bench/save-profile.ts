/**
 * Where a save's CPU goes: the mem0 engine (embedded store, 1536 dims) on this thread against the
 * fake upstream in a child process, a user with `--seed=N` memories added first, then `--n=M`
 * timed saves (the save queue's `add` with inference), `--concurrency` at a time. Prints wall and CPU
 * ms per save, of the process and of the engine's own thread (helper threads run beside it).
 *
 *   node --import tsx bench/save-profile.ts [--seed=300] [--n=200] [--concurrency=1] [--cpu-prof]
 *
 * With `--cpu-prof` (node's flag) the profile of this thread shows the engine's own share.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../src/config';
import { createLogger } from '../src/logger';
import { createMem0Service } from '../src/memory/mem0/build';
import type { MemoryScope } from '../src/memory/types';

function arg(name: string, fallback: number): number {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  return hit === undefined ? fallback : Number(hit.slice(name.length + 3));
}

/** CPU ms of this thread alone (Linux: /proc/self/task/<tid>/stat; NaN elsewhere). */
function threadCpuMs(): number {
  try {
    const stat = fs.readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
}

async function startFake(): Promise<{ url: string; stop(): void }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'fake-upstream-server.ts')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /BENCH_READY (\{.*\})/.exec(out);
      if (m?.[1]) resolve((JSON.parse(m[1]) as { url: string }).url);
    });
    child.once('exit', (code) => reject(new Error(`fake upstream exited ${code}`)));
  });
  return { url, stop: () => child.kill('SIGTERM') };
}

const WORDS = [
  'tea',
  'coffee',
  'Oslo',
  'Paris',
  'kayak',
  'guitar',
  'sister',
  'brother',
  'Python',
  'garden',
  'cat',
  'dog',
  'bike',
  'piano',
  'Berlin',
  'chess',
];
function sentence(i: number): string {
  const w = (k: number) => WORDS[(i * 7 + k * 3) % WORDS.length];
  return `My note ${i}: I like ${w(0)} and my ${w(1)} lives near ${w(2)}. I play ${w(3)} with Anna ${i % 50}.`;
}

async function main(): Promise<void> {
  const seed = arg('seed', 300);
  const n = arg('n', 200);
  const concurrency = arg('concurrency', 1);
  const fake = await startFake();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'save-profile-'));
  const config = loadConfig({
    env: { DATA_DIR: dataDir, OPENAI_API_KEY: 'sk-bench', UPSTREAM_BASE_URL: fake.url, MEMORY_MAX_PER_USER: '1000000' },
  });
  const logger = createLogger({ debug: false, secrets: [] });
  const memory = await createMem0Service(config, logger);
  const scope: MemoryScope = { userId: 'bench-user' };
  const save = (i: number) =>
    memory.add(scope, {
      messages: [
        { role: 'user', content: sentence(i) },
        { role: 'assistant', content: 'Noted.' },
      ],
      infer: true,
    });
  for (let i = 0; i < seed; i++) await save(i);
  const cpu0 = process.cpuUsage();
  const thread0 = threadCpuMs();
  const t0 = performance.now();
  let next = seed;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < seed + n) await save(next++);
    }),
  );
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const thread = threadCpuMs() - thread0;
  console.log(
    `seed ${seed}, ${n} saves, ${concurrency} at a time: ${(wall / n).toFixed(1)} ms wall, ${((cpu.user + cpu.system) / 1000 / n).toFixed(1)} ms CPU per save ` +
      `(this process), ${Number.isNaN(thread) ? 'n/a' : (thread / n).toFixed(1)} ms on the engine's thread; ${(n / (wall / 1000)).toFixed(1)} saves/s`,
  );
  await memory.close();
  fake.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
