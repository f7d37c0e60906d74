/**
 * The engine's embedder for OpenAI-compatible servers (src/memory/http-embedder.ts), against the
 * fake upstream and, for what the fake does not do, small node:http servers on port 0.
 */
import http from 'node:http';
import { EmbeddingHttpError, HttpEmbedder } from '../../src/memory/http-embedder';
import { isContentRefusal, isTransientError } from '../../src/memory/resilience';
import { startFakeHttpServer } from '../fakes/exchange';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';

const EMBEDDINGS = '/v1/embeddings';
const KEY = 'sk-test-embedder-key';

let fake: FakeUpstream;
const embedders: HttpEmbedder[] = [];

function embedderFor(baseURL: string, extra: Partial<ConstructorParameters<typeof HttpEmbedder>[0]> = {}): HttpEmbedder {
  const embedder = new HttpEmbedder({ baseURL, apiKey: KEY, model: 'text-embedding-3-small', dimensions: 64, timeoutMs: 2000, ...extra });
  embedders.push(embedder);
  return embedder;
}

/** The same texts asked of the fake as floats, in JSON, as mem0's own embedder asks. */
async function floatsFromFake(texts: string[]): Promise<number[][]> {
  const body = JSON.stringify({ model: 'text-embedding-3-small', input: texts, encoding_format: 'float', dimensions: 64 });
  const answer = await new Promise<string>((resolve, reject) => {
    const req = http.request(`${fake.url}/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
      });
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    req.end(body);
  });
  return (JSON.parse(answer) as { data: Array<{ embedding: number[] }> }).data.map((d) => d.embedding);
}

/** A server on port 0 that answers every request with `handle`; resolves to its /v1 base URL. */
async function serve(
  handle: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> | void,
): Promise<{ url: string; close: () => Promise<void> }> {
  const server = await startFakeHttpServer({
    host: '127.0.0.1',
    handle: async (req, res) => handle(req, res),
    crashReply: (err) => ({ headers: {}, body: JSON.stringify({ error: { message: String(err) } }) }),
  });
  return { url: `http://127.0.0.1:${server.port}/v1`, close: () => server.close() };
}

function bodyOf(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>));
  });
}

beforeAll(async () => {
  fake = await startFakeUpstream({ embeddingDimensions: 64 });
});

afterEach(() => fake.reset());

afterAll(async () => {
  for (const e of embedders) e.close();
  await fake.close();
});

describe('HttpEmbedder', () => {
  it('sends what mem0 sends (model, dimensions, bearer key) asking for base64, and returns the float32 values of the vectors', async () => {
    const texts = ['Maria lives in Buenos Aires', 'green tea', 'Acme Robotics'];
    const vectors = await embedderFor(fake.url).embedBatch(texts);
    const [request] = fake.requestsTo(EMBEDDINGS);
    expect(request?.headers['authorization']).toBe(`Bearer ${KEY}`);
    expect(JSON.parse(request?.body.toString() ?? '{}')).toEqual({
      model: 'text-embedding-3-small',
      input: texts,
      encoding_format: 'base64',
      dimensions: 64,
    });
    const floats = await floatsFromFake(texts);
    expect(vectors).toHaveLength(3);
    // The same vectors as the JSON answer, at the float32 precision every store keeps them in.
    expect(vectors).toEqual(floats.map((v) => v.map((x) => Math.fround(x))));
    expect(await embedderFor(fake.url).embed('green tea')).toEqual(vectors[1]);
  });

  it('splits more than 100 texts into requests of 100, in order', async () => {
    const texts = Array.from({ length: 250 }, (_, i) => `text number ${i}`);
    const vectors = await embedderFor(fake.url).embedBatch(texts);
    const inputs = fake.requestsTo(EMBEDDINGS).map((r) => (JSON.parse(r.body.toString()) as { input: string[] }).input);
    expect(inputs.map((i) => i.length)).toEqual([100, 100, 50]);
    expect(inputs.flat()).toEqual(texts);
    expect(vectors[137]).toEqual(await embedderFor(fake.url).embed('text number 137'));
  });

  it('an error answer throws with its status and message, sorted as the guard sorts them', async () => {
    const embedder = embedderFor(fake.url);
    fake.failNext(429, { message: 'Rate limit reached', path: EMBEDDINGS });
    const limited = await embedder.embed('x').catch((err: unknown) => err);
    expect(limited).toBeInstanceOf(EmbeddingHttpError);
    expect(limited).toMatchObject({ status: 429, message: '429 Rate limit reached' });
    expect(isTransientError(limited)).toBe(true);

    fake.failNext(503, { path: EMBEDDINGS });
    expect(isTransientError(await embedder.embed('x').catch((err: unknown) => err))).toBe(true);

    fake.failNext(400, { message: 'This model does not support this input', path: EMBEDDINGS });
    const refused = await embedder.embed('x').catch((err: unknown) => err);
    expect(refused).toMatchObject({ status: 400 });
    expect(isTransientError(refused)).toBe(false);
    expect(isContentRefusal(refused)).toBe(true);
    // One attempt per call: the guard owns retries.
    expect(fake.requestsTo(EMBEDDINGS)).toHaveLength(3);
  });

  it('a server that never answers fails the call at the deadline, as a transient timeout', async () => {
    fake.setNext({ kind: 'hang' }, { path: EMBEDDINGS });
    const started = Date.now();
    const err = await embedderFor(fake.url, { timeoutMs: 300 })
      .embed('x')
      .catch((e: unknown) => e);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err).toMatchObject({ code: 'ETIMEDOUT' });
    expect(isTransientError(err)).toBe(true);
  });

  it('a refused connection and a reset mid-answer are transient', async () => {
    const closed = await serve(() => undefined);
    const url = closed.url;
    await closed.close();
    expect(
      isTransientError(
        await embedderFor(url)
          .embed('x')
          .catch((e: unknown) => e),
      ),
    ).toBe(true);

    fake.setNext({ kind: 'reset' }, { path: EMBEDDINGS });
    const reset = await embedderFor(fake.url)
      .embed('x')
      .catch((e: unknown) => e);
    // Node's socket error (from its own realm, so no instanceof here), with its code.
    expect(reset).toMatchObject({ code: expect.stringMatching(/^E[A-Z]+$/) });
    expect(isTransientError(reset)).toBe(true);
  });

  it('reads numbers from a server that ignores encoding_format, and asks for floats once one rejects base64', async () => {
    const formats: unknown[] = [];
    const server = await serve(async (req, res) => {
      const body = await bodyOf(req);
      formats.push(body['encoding_format']);
      res.setHeader('content-type', 'application/json');
      if (body['encoding_format'] === 'base64') {
        res.statusCode = 400;
        res.end(JSON.stringify({ error: { message: "Invalid value for 'encoding_format': base64", param: 'encoding_format' } }));
        return;
      }
      const input = body['input'] as string[];
      res.end(JSON.stringify({ data: input.map((t, index) => ({ index, embedding: [t.length, 0.5, -0.25] })) }));
    });
    try {
      const embedder = embedderFor(server.url);
      expect(await embedder.embedBatch(['abc', 'hello'])).toEqual([
        [3, 0.5, -0.25],
        [5, 0.5, -0.25],
      ]);
      expect(await embedder.embed('four')).toEqual([4, 0.5, -0.25]);
      expect(formats).toEqual(['base64', 'float', 'float']);
    } finally {
      await server.close();
    }
  });

  it('answers in the order of the texts when the server lists them out of order', async () => {
    const server = await serve(async (req, res) => {
      const input = (await bodyOf(req))['input'] as string[];
      const data = input.map((t, index) => ({ index, embedding: [t.length] })).reverse();
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ data }));
    });
    try {
      expect(await embedderFor(server.url).embedBatch(['a', 'bb', 'ccc'])).toEqual([[1], [2], [3]]);
    } finally {
      await server.close();
    }
  });

  it('a base URL that is not http(s) is refused at construction', () => {
    expect(() => new HttpEmbedder({ baseURL: 'ftp://example.test/v1', model: 'm', timeoutMs: 1000 })).toThrow('http(s)');
  });
});
