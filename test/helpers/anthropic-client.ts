/**
 * Anthropic SDK clients for the Anthropic tests (the fake upstream's own, and the proxy's), sending
 * only the credential the test passes: never retrying, and never consulting the SDK's default
 * credential chain (profile files under ~/.config/anthropic, ANTHROPIC_PROFILE…), which would add a
 * developer's own token. Raw requests (exact bytes over node:http) are in raw-http.ts.
 */
import Anthropic from 'anthropic-sdk-v1';

/** The SDK without its default credential chain: only what the test passes is sent. */
export class HermeticAnthropic extends Anthropic {
  protected override _shouldResolveDefaultCredentials(): boolean {
    return false;
  }
}

export interface TestClientOptions {
  /** Per-request timeout in ms (default 10 s). */
  timeout?: number;
}

/** Sends `key` as `x-api-key` (as Claude Code does with ANTHROPIC_API_KEY), and no Authorization header. */
export function xApiKeyClient(baseURL: string, key: string, { timeout = 10_000 }: TestClientOptions = {}): Anthropic {
  return new HermeticAnthropic({ apiKey: null, authToken: null, defaultHeaders: { 'x-api-key': key }, baseURL, maxRetries: 0, timeout });
}

/**
 * Sends `key` as `Authorization: Bearer`: passed as the SDK's `authToken` (ANTHROPIC_AUTH_TOKEN), or
 * with `as: 'apiKey'` as its `apiKey`, which SDK 1.16 sends as a bearer token too.
 */
export function bearerClient(
  baseURL: string,
  key: string,
  { timeout = 10_000, as = 'authToken' }: TestClientOptions & { as?: 'authToken' | 'apiKey' } = {},
): Anthropic {
  const credential = as === 'apiKey' ? { apiKey: key, authToken: null } : { authToken: key, apiKey: null };
  return new HermeticAnthropic({ ...credential, baseURL, maxRetries: 0, timeout });
}
