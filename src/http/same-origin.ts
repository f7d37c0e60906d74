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
 *
 * DNS rebinding gets past that check (the attacker's name resolves to 127.0.0.1, so the page and
 * the proxy share an origin), but not past the `Host` one: with `allowedHosts` given (by default
 * when the proxy listens on loopback only: `localhost`, `127.0.0.1`, `::1`), a `Host` header naming
 * any other host is refused (403).
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

/** The host name a `Host` header names (lower case, IPv6 without brackets), or undefined. */
function hostName(host: string | undefined): string | undefined {
  if (host === undefined) return undefined;
  try {
    return new URL(`http://${host}`).hostname.toLowerCase().replace(/^\[|\]$/g, '');
  } catch {
    return undefined;
  }
}

/**
 * @param allowedOrigins browser origins allowed cross-origin.
 * @param allowedHosts host names a request's `Host` may name; undefined: any.
 */
export function sameOrigin(allowedOrigins: readonly string[], allowedHosts?: readonly string[]): Handler {
  const allowed = new Set(allowedOrigins);
  const hosts = allowedHosts && new Set(allowedHosts.map((h) => h.toLowerCase().replace(/^\[|\]$/g, '')));
  return (req, _res, next) => {
    if (hosts) {
      const name = hostName(header(req, 'host'));
      if (name === undefined || !hosts.has(name)) {
        next(new ForbiddenError('This host name is not served here (see ALLOWED_HOSTS)', 'Host not allowed'));
        return;
      }
    }
    const origin = foreignOrigin(req);
    if (origin === undefined || allowed.has(origin)) {
      next();
      return;
    }
    next(new ForbiddenError('Cross-origin browser requests are not allowed (see ALLOWED_ORIGINS)', 'Cross-origin request refused'));
  };
}
