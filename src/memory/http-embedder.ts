/**
 * The memory engine's embedder for OpenAI-compatible servers (MEM0_PROVIDER=openai), over
 * node:http with kept-alive connections, in place of mem0's (the openai SDK v4 on node-fetch).
 *
 * Why: every recall and every save waits for one embedding request, on the engine's one thread.
 * mem0's client spends about a millisecond of CPU per request on building it (the SDK, node-fetch,
 * zod), and asks for `encoding_format: "float"`, so 1536 numbers per text arrive as JSON text and
 * are parsed. Here a request is one `http.request`, and vectors come as base64 float32 (a quarter
 * of the bytes, no number parsing), as OpenAI's own SDKs ask for them by default.
 *
 * What stays as mem0's embedder does it: the same endpoint (`<base URL>/embeddings`), model,
 * `dimensions`, bearer key, batches of at most 100 texts in order, one attempt per call (our
 * guard retries) and the engine's read deadline per request. Errors keep the shapes the guard
 * sorts (resilience.ts): an HTTP answer throws with its `status` (429 and 5xx are transient,
 * 400/413/422 refusals), a network failure with its Node `code`, a deadline with `ETIMEDOUT`.
 * A server that ignores `encoding_format` and sends numbers is read as it is; one that rejects
 * base64 (a 4xx naming encoding_format) is asked for floats from then on.
 */
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import type { EmbedderLike } from './batching-embedder';

export interface HttpEmbedderOptions {
  /** The API's base URL, e.g. `https://api.openai.com/v1` (requests go to `<baseURL>/embeddings`). */
  baseURL: string;
  apiKey?: string | undefined;
  model: string;
  /** Sent as `dimensions` when set (models that can shorten their vectors). */
  dimensions?: number | undefined;
  /** Deadline of one request, headers and body. */
  timeoutMs: number;
}

/** An embeddings request the server answered with an error status. */
export class EmbeddingHttpError extends Error {
  override readonly name = 'EmbeddingHttpError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(`${status} ${message}`);
  }
}

/** Most texts per request, as mem0's OpenAI embedder sends. */
const MAX_BATCH = 100;
const LITTLE_ENDIAN = os.endianness() === 'LE';
/** Largest answer read (a batch of 100 × 3072 floats as JSON is about 6 MB). */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

interface Answer {
  status: number;
  body: Buffer;
}

/** The error text of an OpenAI-style error body (`{"error": {"message": ...}}`), else the raw text, bounded. */
function errorText(body: Buffer): string {
  const raw = body.toString('utf8', 0, Math.min(body.byteLength, 2000));
  try {
    const parsed = JSON.parse(raw) as { error?: { message?: unknown } | string; message?: unknown };
    if (typeof parsed.error === 'string') return parsed.error;
    if (parsed.error && typeof parsed.error.message === 'string') return parsed.error.message;
    if (typeof parsed.message === 'string') return parsed.message;
  } catch {
    // Not JSON: the text itself.
  }
  return raw.trim() || 'embeddings request failed';
}

/** One embedding of an answer: base64 little-endian float32, or numbers. */
function vectorOf(embedding: unknown): number[] {
  if (Array.isArray(embedding)) return embedding as number[];
  if (typeof embedding !== 'string') throw new Error('embeddings answer: an embedding is neither a list nor base64');
  const bytes = Buffer.from(embedding, 'base64');
  if (bytes.byteLength % 4 !== 0) throw new Error('embeddings answer: a base64 embedding is not float32');
  if (!LITTLE_ENDIAN) {
    const out = new Array<number>(bytes.byteLength / 4);
    for (let i = 0; i < out.length; i++) out[i] = bytes.readFloatLE(i * 4);
    return out;
  }
  // A copy into a buffer of its own: the decoded bytes may sit at an offset that is not a multiple of 4.
  const floats = new Float32Array(bytes.byteLength / 4);
  new Uint8Array(floats.buffer).set(bytes);
  return Array.from(floats);
}

export class HttpEmbedder implements EmbedderLike {
  private readonly url: URL;
  private readonly agent: http.Agent;
  private readonly client: typeof http | typeof https;
  private format: 'base64' | 'float' = 'base64';

  constructor(private readonly options: HttpEmbedderOptions) {
    this.url = new URL(`${options.baseURL.replace(/\/+$/, '')}/embeddings`);
    if (this.url.protocol !== 'http:' && this.url.protocol !== 'https:') {
      throw new Error(`embedder base URL must be http(s): ${this.url.protocol}`);
    }
    this.client = this.url.protocol === 'https:' ? https : http;
    this.agent = new this.client.Agent({ keepAlive: true });
  }

  async embed(text: string): Promise<number[]> {
    const [vector] = await this.embedBatch([text]);
    if (!vector) throw new Error('embeddings answer: no embedding');
    return vector;
  }

  async embedBatch(texts: string[]): Promise<number[][]> {
    const out: number[][] = [];
    for (let i = 0; i < texts.length; i += MAX_BATCH) out.push(...(await this.embedChunk(texts.slice(i, i + MAX_BATCH))));
    if (out.length !== texts.length) {
      throw new Error(`embeddings answer: ${out.length} embeddings for ${texts.length} texts (model '${this.options.model}')`);
    }
    return out;
  }

  /** Ends the kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  private async embedChunk(texts: string[]): Promise<number[][]> {
    const format = this.format;
    const answer = await this.post(texts, format);
    if (answer.status >= 200 && answer.status < 300) return this.vectors(answer.body);
    const message = errorText(answer.body);
    if (format === 'base64' && answer.status >= 400 && answer.status < 500 && /encoding_format/i.test(message)) {
      this.format = 'float';
      return this.embedChunk(texts);
    }
    throw new EmbeddingHttpError(answer.status, message);
  }

  private vectors(body: Buffer): number[][] {
    const parsed = JSON.parse(body.toString('utf8')) as { data?: Array<{ index?: number; embedding?: unknown }> };
    if (!Array.isArray(parsed.data)) throw new Error('embeddings answer: no data list');
    return [...parsed.data].sort((a, b) => (a.index ?? 0) - (b.index ?? 0)).map((item) => vectorOf(item.embedding));
  }

  private post(texts: string[], format: 'base64' | 'float'): Promise<Answer> {
    const { model, dimensions, apiKey, timeoutMs } = this.options;
    const body = Buffer.from(
      JSON.stringify({ model, input: texts, encoding_format: format, ...(dimensions !== undefined ? { dimensions } : {}) }),
    );
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/json',
      accept: 'application/json',
      'content-length': body.byteLength,
    };
    if (apiKey) headers['authorization'] = `Bearer ${apiKey}`;
    return new Promise<Answer>((resolve, reject) => {
      const req = this.client.request(this.url, { method: 'POST', agent: this.agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.byteLength;
          if (size > MAX_ANSWER_BYTES) {
            req.destroy(new Error(`embeddings answer larger than ${MAX_ANSWER_BYTES} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
        });
        res.on('error', fail);
      });
      const timer = setTimeout(() => {
        const err = Object.assign(new Error(`embeddings request timed out after ${timeoutMs} ms`), { code: 'ETIMEDOUT' });
        req.destroy(err);
      }, timeoutMs);
      timer.unref();
      function fail(err: Error): void {
        clearTimeout(timer);
        reject(err);
      }
      req.on('error', fail);
      req.end(body);
    });
  }
}
