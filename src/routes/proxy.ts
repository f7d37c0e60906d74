/**
 * The `/v1/*` routes: every path but the memory-augmented ones is forwarded untouched, streaming
 * in both directions.
 */
import type { Handler } from '../http/pipeline';
import { isV1, type Api } from '../http/api';
import type { Upstream } from '../proxy/upstream';

export function passthroughRoute(upstream: Upstream): Handler {
  return (req, res, next) => upstream.forward(req, res, next);
}

const KNOWN_V1 = new Set([
  'chat',
  'responses',
  'embeddings',
  'models',
  'completions',
  'moderations',
  'images',
  'audio',
  'files',
  'uploads',
  'batches',
  'fine_tuning',
  'assistants',
  'threads',
  'vector_stores',
  'realtime',
  'conversations',
]);

/** Anthropic's top-level resources (`/v1/<first segment>`) that get a label of their own. */
const KNOWN_ANTHROPIC = new Set(['messages', 'models', 'files', 'complete', 'skills', 'organizations']);
/** Anthropic paths under `/v1/messages/` that get a label of their own. */
const KNOWN_ANTHROPIC_MESSAGES = new Set(['count_tokens', 'batches']);

const ADMIN_ROUTES = new Set([
  '/health',
  '/livez',
  '/readyz',
  '/metrics',
  '/search',
  '/list',
  '/remember',
  '/forget',
  '/mcp',
  '/whoami',
  '/stats',
  '/users',
  '/update',
  '/preview',
  '/traces',
  '/export',
]);

/**
 * Route label for logs and metrics, from the path alone, so it is known before authentication
 * (a 401 is counted under the route it was refused on) and comes from a fixed set.
 */
export function routeLabel(path: string, api: Api | undefined): string {
  if (isV1(path)) return api === 'anthropic' ? anthropicLabel(path) : v1Label(path);
  if (path === '/ui' || path.startsWith('/ui/')) return '/ui';
  const trimmed = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
  return ADMIN_ROUTES.has(trimmed) ? trimmed : 'unmatched';
}

/** Route label for a `/v1/...` path, from a fixed set so made-up paths cannot add label values. */
export function v1Label(path: string): string {
  if (path === '/v1/chat/completions') return '/v1/chat/completions';
  const first = path.split('/')[2] ?? '';
  return KNOWN_V1.has(first) ? `/v1/${first}` : '/v1/other';
}

/** Route label for an Anthropic `/v1/...` request, from a fixed set as for OpenAI's. */
export function anthropicLabel(path: string): string {
  const [, , first = '', second = ''] = path.split('/');
  if (first === 'messages' && second !== '') return KNOWN_ANTHROPIC_MESSAGES.has(second) ? `/v1/messages/${second}` : '/v1/messages/other';
  return KNOWN_ANTHROPIC.has(first) ? `/v1/${first}` : '/v1/other';
}
