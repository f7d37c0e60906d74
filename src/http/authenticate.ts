/**
 * Authentication: who is calling.
 *
 * With `AUTH_TOKEN` set every endpoint requires the proxy key, as `Authorization: Bearer <key>`
 * (OpenAI's clients) or `x-api-key: <key>` (Anthropic's, Claude Code); when both are sent, either
 * may carry it. The comparison
 * hashes both sides and compares the digests in constant time, so neither the token's content nor
 * its length leaks through timing. Without it the proxy is in development mode: callers are
 * anonymous and keyed by their socket address (never by `X-Forwarded-For` unless `TRUST_PROXY`).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { ipKeyGenerator } from 'express-rate-limit';
import { RateLimitError, UnauthorizedError } from '../errors';
import type { Logger } from '../logger';
import type { Caller } from './context';
import type { FailedLogins } from './failed-logins';
import { pathOf, type Handler } from './pipeline';

export interface Authenticator {
  /** Whether callers must present a credential. */
  readonly required: boolean;
  /** The caller a bearer credential stands for, or undefined when it stands for nobody. */
  identify(credential: string): Caller | undefined;
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** The single shared `AUTH_TOKEN`, an admin caller with id `token`. */
export function tokenAuthenticator(token: string | undefined): Authenticator {
  if (token === undefined) return { required: false, identify: () => undefined };
  const expected = sha256(token);
  const caller: Caller = Object.freeze({ id: 'token', kind: 'token', userId: undefined, admin: true, limits: {} });
  return {
    required: true,
    identify: (credential) => (timingSafeEqual(sha256(credential), expected) ? caller : undefined),
  };
}

/** The client address used to key anonymous callers (IPv6 grouped by /56, as express-rate-limit advises). */
export function clientAddress(req: IncomingMessage, trustProxy: boolean): string {
  let ip = req.socket.remoteAddress ?? 'unknown';
  if (trustProxy) {
    // Behind a trusted proxy the client is the left-most X-Forwarded-For entry.
    const forwarded = req.headers['x-forwarded-for'];
    const first = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(',')[0]?.trim();
    if (first) ip = first;
  }
  return ipKeyGenerator(ip);
}

function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/** The credentials a request presents, in the order they are tried. */
function credentials(req: IncomingMessage): string[] {
  const found: string[] = [];
  const fromBearer = bearer(req.headers.authorization);
  if (fromBearer !== undefined) found.push(fromBearer);
  const raw = req.headers['x-api-key'];
  const apiKey = (Array.isArray(raw) ? raw[0] : raw)?.trim();
  if (apiKey) found.push(apiKey);
  return found;
}

/** Longest request path a refusal's log line repeats (the rest is the caller's to invent). */
const MAX_LOGGED_PATH = 200;

/**
 * @param failedLogins when given, an address past its refused credentials per minute is answered
 *   429 without its credential being checked (or logged).
 */
export function authenticate(auth: Authenticator, logger: Logger, trustProxy: boolean, failedLogins?: FailedLogins): Handler {
  const refuse = (req: IncomingMessage, address: string, message: string): UnauthorizedError => {
    void failedLogins?.record(address);
    logger.warn(message, { request_id: req.id, path: pathOf(req).slice(0, MAX_LOGGED_PATH) });
    return new UnauthorizedError(message);
  };
  return (req, _res, next) => {
    if (!auth.required) {
      req.caller = { id: `ip:${clientAddress(req, trustProxy)}`, kind: 'anonymous', userId: undefined, admin: true, limits: {} };
      next();
      return;
    }
    const address = clientAddress(req, trustProxy);
    const retryAfter = failedLogins?.retryAfter(address);
    if (retryAfter !== undefined && failedLogins) {
      next(new RateLimitError(failedLogins.perMinute, retryAfter));
      return;
    }
    if (!req.headers.authorization && !req.headers['x-api-key']) {
      next(refuse(req, address, 'No authorization header provided'));
      return;
    }
    let caller: Caller | undefined;
    for (const credential of credentials(req)) {
      caller = auth.identify(credential);
      if (caller) break;
    }
    if (!caller) {
      next(refuse(req, address, 'Invalid authorization token provided'));
      return;
    }
    req.caller = caller;
    next();
  };
}
