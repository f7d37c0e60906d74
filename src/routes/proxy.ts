/**
 * The `/v1/*` routes: every path but the memory-augmented ones is forwarded untouched, streaming
 * in both directions.
 */
import type { Handler } from '../http/pipeline';
import type { Upstream } from '../proxy/upstream';

export function passthroughRoute(upstream: Upstream): Handler {
  return (req, res, next) => upstream.forward(req, res, next);
}

const KNOWN_V1 = new Set([
  'chat', 'responses', 'embeddings', 'models', 'completions', 'moderations', 'images', 'audio', 'files', 'uploads',
  'batches', 'fine_tuning', 'assistants', 'threads', 'vector_stores', 'realtime', 'conversations',
]);

/** Route label for a `/v1/...` path, from a fixed set so made-up paths cannot add label values. */
export function v1Label(path: string): string {
  if (path === '/v1/chat/completions') return '/v1/chat/completions';
  const first = path.split('/')[2] ?? '';
  return KNOWN_V1.has(first) ? `/v1/${first}` : '/v1/other';
}
