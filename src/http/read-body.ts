/**
 * Reads a request body into one Buffer within a byte limit, for the routes that must look at it
 * (the chat route). Lighter than body-parser on the hot path: no charset or type negotiation, just
 * the bytes, inflated when the client compressed them.
 */
import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError } from '../errors';

function decoded(req: IncomingMessage): Readable {
  const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
  switch (encoding) {
    case 'identity':
      return req;
    case 'gzip':
    case 'x-gzip':
      return req.pipe(zlib.createGunzip());
    case 'deflate':
      return req.pipe(zlib.createInflate());
    case 'br':
      return req.pipe(zlib.createBrotliDecompress());
    default:
      throw new UnsupportedMediaTypeError(`Unsupported Content-Encoding: ${encoding}`);
  }
}

/**
 * Refuses (415) a body that does not say it is JSON (`application/json` or `…+json`): the memory
 * routes read JSON only, and a browser can send `text/plain` cross-site without a preflight.
 */
export function requireJson(req: IncomingMessage): void {
  const type = req.headers['content-type']?.split(';')[0]?.trim().toLowerCase();
  if (type === 'application/json' || type?.endsWith('+json')) return;
  throw new UnsupportedMediaTypeError('Content-Type must be application/json');
}

/**
 * Resolves with the whole (decoded) body; rejects with 413 past `limit` bytes (checked against
 * Content-Length first, so an oversized body is refused before it is read) and 400 when the
 * client goes away mid-body.
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > limit) return Promise.reject(new PayloadTooLargeError(`Request body exceeds ${limit} bytes`));
  let stream: Readable;
  try {
    stream = decoded(req);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const settle = (err: Error | undefined): void => {
      if (done) return;
      done = true;
      stream.off('data', onData);
      if (err) {
        // Stop reading; let the connection drain or close as Node decides.
        req.unpipe();
        stream.resume();
        reject(err);
      } else resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) settle(new PayloadTooLargeError(`Request body exceeds ${limit} bytes`));
      else chunks.push(chunk);
    };
    stream.on('data', onData);
    stream.once('end', () => settle(undefined));
    stream.once('error', (err: Error) =>
      settle(err instanceof PayloadTooLargeError ? err : new BadRequestError('Request body could not be read')),
    );
    req.once('aborted', () => settle(new BadRequestError('Request aborted')));
  });
}
