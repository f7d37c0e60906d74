/**
 * The combined authenticator: `AUTH_TOKEN` (an admin caller with id `token`) and the key registry
 * both accepted. Authentication is required when either exists, which also keeps the caller's own
 * credential from ever being forwarded upstream (assemble.ts forwards it only while `required` is
 * false). `required` is read per request: a registry file that first appears on SIGHUP turns it on
 * for good (deleting the file later revokes every key, it does not reopen development mode).
 *
 * Both checks always run, so the time taken does not tell a token from a key.
 */
import { tokenAuthenticator, type Authenticator } from '../http/authenticate';
import type { KeyRegistry } from './registry';

/** @param registry the key registry (active once its file has been read), or undefined for none. */
export function combinedAuthenticator(token: string | undefined, registry: KeyRegistry | undefined): Authenticator {
  const tokenAuth = tokenAuthenticator(token);
  if (registry === undefined) return tokenAuth;
  return {
    get required() {
      return tokenAuth.required || registry.active;
    },
    identify: (credential) => {
      const byToken = tokenAuth.identify(credential);
      const byKey = registry.identify(credential);
      return byToken ?? byKey;
    },
  };
}
