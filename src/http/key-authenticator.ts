/**
 * The combined authenticator: `AUTH_TOKEN` (an admin caller with id `token`) and the key registry
 * both accepted. Authentication is required when either exists, which also keeps the caller's own
 * `Authorization` from ever being forwarded upstream (index.ts: `forwardCallerAuthorization` is
 * `!required`).
 *
 * Both checks always run, so the time taken does not tell a token from a key.
 */
import type { KeyRegistry } from '../keys/registry';
import { tokenAuthenticator, type Authenticator } from './authenticate';

/**
 * @param registry the loaded registry, or undefined when `KEYS_FILE` does not exist. `required` is
 * fixed here: a registry file that appears after start takes effect only after a restart.
 */
export function combinedAuthenticator(token: string | undefined, registry: KeyRegistry | undefined): Authenticator {
  const tokenAuth = tokenAuthenticator(token);
  if (registry === undefined) return tokenAuth;
  return {
    required: true,
    identify: (credential) => {
      const byToken = tokenAuth.identify(credential);
      const byKey = registry.identify(credential);
      return byToken ?? byKey;
    },
  };
}
