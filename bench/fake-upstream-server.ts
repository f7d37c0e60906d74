/**
 * Runs the fake OpenAI upstream (test/fakes/openai-upstream.ts) as its own process for the
 * benchmarks, so its CPU never mixes with the load generator's or a proxy's.
 *
 *   node --import tsx bench/fake-upstream-server.ts [--port=0] [--first-token-ms=0] [--chunk-interval-ms=0] [--response-delay-ms=0]
 *                                                   [--embedding-delay-ms=0]
 *
 * `--embedding-delay-ms` (or env FAKE_EMBEDDING_DELAY_MS; the flag wins) delays every
 * /v1/embeddings answer, as a real embeddings round trip would (OpenAI's take ~120 ms).
 *
 * Prints `BENCH_READY {"url":"http://127.0.0.1:PORT/v1","port":PORT}` once listening; exits on
 * SIGTERM/SIGINT. Requests are not recorded (memory stays flat under load), only counted:
 * `GET /__stats` (outside /v1) answers `{"requests", "byPath", "embeddings": {"requests", "inputs"}}`.
 */
import { startFakeUpstream } from '../test/fakes/openai-upstream';

function arg(name: string, fallback: number): number {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  const n = hit === undefined ? NaN : Number(hit.slice(name.length + 3));
  return Number.isFinite(n) ? n : fallback;
}

function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  const n = raw === undefined || raw.trim() === '' ? NaN : Number(raw);
  return Number.isFinite(n) ? n : fallback;
}

async function main(): Promise<void> {
  const fake = await startFakeUpstream({
    port: arg('port', 0),
    record: false,
    firstTokenDelayMs: arg('first-token-ms', 0),
    chunkIntervalMs: arg('chunk-interval-ms', 0),
    responseDelayMs: arg('response-delay-ms', 0),
    embeddingDelayMs: arg('embedding-delay-ms', envNumber('FAKE_EMBEDDING_DELAY_MS', 0)),
    statsEndpoint: true,
  });
  const stop = (): void => {
    fake.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.stdout.write(`BENCH_READY ${JSON.stringify({ url: fake.url, port: fake.port })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`fake upstream failed: ${String(err)}\n`);
  process.exit(1);
});
