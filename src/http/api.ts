/**
 * Which API a `/v1/*` request speaks: OpenAI's (the default) or Anthropic's.
 *
 * Anthropic's own paths (`/v1/messages` and everything under it, the legacy `/v1/complete`) are
 * Anthropic's whatever the headers say. Any other request is Anthropic's when it carries the
 * `anthropic-version` header, which decides the paths both APIs have (`/v1/models`, `/v1/files`,
 * `/v1/batches`, …): every Anthropic client sends it on every request (the API refuses requests
 * without it) and no OpenAI client sends it. (Anthropic also serves an OpenAI-compatible
 * `/v1/chat/completions`; a request there with the header goes to Anthropic as well.)
 */
import type { IncomingHttpHeaders } from 'node:http';

export type Api = 'openai' | 'anthropic';

/** `/v1`, `/v1/...` or `/v1?...` (a path, or a request target in origin form): the proxy's traffic. */
export function isV1(target: string): boolean {
  return target.startsWith('/v1') && (target.length === 3 || target[3] === '/' || target[3] === '?');
}

export function isAnthropicPath(path: string): boolean {
  return path === '/v1/messages' || path.startsWith('/v1/messages/') || path === '/v1/complete';
}

export function apiOf(path: string, headers: IncomingHttpHeaders): Api {
  return isAnthropicPath(path) || headers['anthropic-version'] !== undefined ? 'anthropic' : 'openai';
}
