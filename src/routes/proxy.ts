/**
 * The `/v1/*` routes: every path but the memory-augmented ones is forwarded untouched, streaming
 * in both directions.
 */
import type { RequestHandler } from 'express';
import type { Upstream } from '../proxy/upstream';

export function passthroughRoute(upstream: Upstream): RequestHandler {
  return (req, res, next) => upstream.forward(req, res, next);
}

const KNOWN_V1 = new Set([
  'chat', 'responses', 'embeddings', 'models', 'completions', 'moderations', 'images', 'audio', 'files', 'uploads',
  'batches', 'fine_tuning', 'assistants', 'threads', 'vector_stores', 'realtime', 'conversations',
]);

/** Route label for logs and metrics from a fixed set, so made-up paths cannot add label values. */
export function v1Label(path: string): string {
  if (path === '/chat/completions' || path === '/chat/completions/') return '/v1/chat/completions';
  const first = path.split('/')[1] ?? '';
  return KNOWN_V1.has(first) ? `/v1/${first}` : '/v1/other';
}
