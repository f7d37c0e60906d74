// The sign-in form: the token is checked with GET /whoami and, when accepted, kept in sessionStorage.
import { useState } from 'preact/hooks';
import { ApiError, api, clearToken, describeError, setToken, type WhoAmI } from './api';

export function SignIn({ message, onSignedIn }: { message: string | null; onSignedIn: (who: WhoAmI) => void }) {
  const [token, setTokenText] = useState('');
  const [error, setError] = useState<string | null>(message);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const value = token.trim();
    if (!value) {
      setError('Enter a token');
      return;
    }
    setBusy(true);
    setError(null);
    setToken(value);
    try {
      const who = await api.whoami();
      onSignedIn(who);
    } catch (err) {
      clearToken();
      setError(err instanceof ApiError && err.status === 401 ? 'Token refused' : describeError(err));
      setBusy(false);
    }
  };

  return (
    <main class="signin">
      <form class="card" data-testid="signin-form" onSubmit={submit}>
        <h1>Memory console</h1>
        <p class="muted">Sign in with an admin key, or a key bound to one user.</p>
        <label class="field">
          <span>Token</span>
          <input
            type="password"
            data-testid="token-input"
            autoComplete="off"
            spellcheck={false}
            value={token}
            onInput={(e) => setTokenText(e.currentTarget.value)}
          />
        </label>
        {error !== null && (
          <p class="signin-error" role="alert" data-testid="signin-error">
            {error}
          </p>
        )}
        <button type="submit" class="primary" data-testid="signin-submit" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
