/**
 * Requests over plain node:http that return the raw response, for checks the SDKs hide (SSE
 * framing, exact bytes, status codes): `rawRequest` sends the exact bytes given, `rawPost` a JSON
 * value.
 */
import http from 'node:http';

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The body as UTF-8. */
  text: string;
}

/** Sends `body` as the exact bytes given (with its content-length), and reads the whole reply. */
export function rawRequest(url: string, method: string, headers: Record<string, string>, body?: Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method, headers: body === undefined ? headers : { ...headers, 'content-length': String(body.length) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const all = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: all, text: all.toString('utf8') });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export function rawPost(url: string, body: unknown): Promise<RawResponse> {
  return rawRequest(url, 'POST', { 'content-type': 'application/json' }, Buffer.from(JSON.stringify(body)));
}
