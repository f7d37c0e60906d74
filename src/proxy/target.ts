/**
 * Request-target safety: a `/v1/*` request is only ever resolved against `UPSTREAM_BASE_URL`.
 *
 * The suffix after `/v1` is appended to the base path as text, never resolved as a URL, and is
 * refused when it could mean something else to the upstream: absolute-form targets, `.`/`..`
 * segments (plain, percent-encoded, or double-encoded), encoded slashes or backslashes, empty
 * segments (`//host`), and control characters.
 */
import { BadRequestError } from '../errors';

// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters in a request target is what this pattern is for.
const CONTROL = /[\u0000-\u001f\u007f]/;
const MAX_DECODE_ROUNDS = 3;

/** Decodes until stable (bounded), so `%252e%252e` is seen as `..` too. */
function decodeFully(segment: string): string {
  let current = segment;
  for (let i = 0; i < MAX_DECODE_ROUNDS; i += 1) {
    let next: string;
    try {
      next = decodeURIComponent(current);
    } catch {
      throw new BadRequestError('Malformed percent-encoding in the request path');
    }
    if (next === current) return current;
    current = next;
  }
  return current;
}

/**
 * Returns the path and query to request upstream for `originalUrl` (which starts with `mountPath`),
 * e.g. `/v1/chat/completions?x=1` with base path `/v1` → `/v1/chat/completions?x=1`.
 * @throws BadRequestError for any target that could escape the base path.
 */
export function resolveUpstreamPath(basePath: string, mountPath: string, originalUrl: string): string {
  if (!originalUrl.startsWith(`${mountPath}`) || !originalUrl.startsWith('/')) {
    throw new BadRequestError('Request target must be a path (origin-form)');
  }
  const rest = originalUrl.slice(mountPath.length);
  const q = rest.indexOf('?');
  const suffix = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? '' : rest.slice(q);
  if (suffix !== '' && !suffix.startsWith('/')) throw new BadRequestError('Invalid request path');
  if (CONTROL.test(rest) || rest.includes('\\')) throw new BadRequestError('Invalid characters in the request target');
  if (query.includes('#')) throw new BadRequestError('Invalid characters in the request target');

  const segments = suffix.split('/').slice(1);
  segments.forEach((segment, i) => {
    if (segment === '' && i !== segments.length - 1) throw new BadRequestError('Empty path segments are not allowed');
    const decoded = decodeFully(segment);
    if (decoded === '.' || decoded === '..') throw new BadRequestError('Dot segments are not allowed in the request path');
    if (decoded.includes('/') || decoded.includes('\\') || CONTROL.test(decoded)) {
      throw new BadRequestError('Encoded separators are not allowed in the request path');
    }
  });
  return `${basePath.replace(/\/+$/, '')}${suffix}${query}`;
}
