/**
 * `POST /v1/chat/completions`: the body is read (within the size limit) and must be JSON; it is
 * then forwarded as the caller sent it.
 */
import { BadRequestError } from '../errors';
import type { Handler } from '../http/pipeline';
import { readBody } from '../http/read-body';
import type { Upstream } from '../proxy/upstream';

/** Parses a chat body; anything but a JSON object is the caller's mistake (400). */
export function parseChatBody(raw: Buffer): Record<string, unknown> {
  if (raw.length === 0) throw new BadRequestError('Request body must be a JSON object');
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new BadRequestError('Request body is not valid JSON');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new BadRequestError('Request body must be a JSON object');
  return parsed as Record<string, unknown>;
}

export function chatRoute(upstream: Upstream, maxBodyBytes: number): Handler {
  return async (req, res, next) => {
    const raw = await readBody(req, maxBodyBytes);
    parseChatBody(raw);
    upstream.forward(req, res, next, { body: raw });
  };
}
