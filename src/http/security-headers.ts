/**
 * Response headers for the proxy's own JSON endpoints (the memory admin API, /health, /metrics):
 * no MIME sniffing, no caching of memories by browsers or intermediaries, no framing, and a CSP
 * that allows nothing, since these responses are data and never a page. `/v1/*` is left alone:
 * there the upstream's headers pass through.
 *
 * Request header size is bounded by Node's own default (`--max-http-header-size`, 16 KiB): larger
 * headers are refused by Node with 431 before any of our code runs.
 */
import type { Handler } from './pipeline';

const HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
  'X-Frame-Options': 'DENY',
  'Content-Security-Policy': "default-src 'none'; frame-ancestors 'none'",
  'Referrer-Policy': 'no-referrer',
  'Cross-Origin-Resource-Policy': 'same-origin',
});

export function securityHeaders(): Handler {
  return (_req, res, next) => {
    for (const [name, value] of Object.entries(HEADERS)) res.setHeader(name, value);
    next();
  };
}
