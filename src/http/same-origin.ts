/**
 * Browsers' cross-origin requests are refused (403) unless their origin is allowed
 * (`ALLOWED_ORIGINS`).
 *
 * Any web page can make a visitor's browser POST to `http://localhost:8000` (a `text/plain` form
 * post needs no CORS preflight). Without `AUTH_TOKEN` (development mode) that request would run
 * with the operator's upstream key and become the operator's memory. The proxy answers no CORS
 * preflight, so a browser page on another origin has no legitimate use for it: a request that says
 * it comes from another origin (`Origin` naming another host than `Host`, or
 * `Sec-Fetch-Site: cross-site` / `same-site`) is refused before anything else runs. Programs (SDKs,
 * curl, Claude Code) send neither header and are not affected.
 */
import type { IncomingMessage } from 'node:http';
import { ForbiddenError } from '../errors';
import type { Handler } from './pipeline';

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** The origin a browser says the request comes from when it is another one than ours; undefined when same-origin or not a browser. */
function foreignOrigin(req: IncomingMessage): string | undefined {
  const origin = header(req, 'origin');
  if (origin !== undefined) {
    if (origin === 'null') return origin;
    try {
      return new URL(origin).host === header(req, 'host') ? undefined : origin;
    } catch {
      return origin;
    }
  }
  const site = header(req, 'sec-fetch-site');
  return site === 'cross-site' || site === 'same-site' ? `(${site})` : undefined;
}

export function sameOrigin(allowedOrigins: readonly string[]): Handler {
  const allowed = new Set(allowedOrigins);
  return (req, _res, next) => {
    const origin = foreignOrigin(req);
    if (origin === undefined || allowed.has(origin)) {
      next();
      return;
    }
    next(new ForbiddenError('Cross-origin browser requests are not allowed (see ALLOWED_ORIGINS)', 'Cross-origin request refused'));
  };
}
