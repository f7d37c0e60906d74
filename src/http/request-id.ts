/**
 * `X-Request-ID`: echoed when the caller sent a sane one, generated otherwise, and set on the
 * response before anything else can answer.
 */
import { randomUUID } from 'node:crypto';
import type { Handler } from './pipeline';

const SANE_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

export function requestId(): Handler {
  return (req, res, next) => {
    const sent = req.headers['x-request-id'];
    const id = typeof sent === 'string' && SANE_ID.test(sent) ? sent : randomUUID();
    req.receivedAt = process.hrtime.bigint();
    req.id = id;
    res.setHeader('X-Request-ID', id);
    next();
  };
}
