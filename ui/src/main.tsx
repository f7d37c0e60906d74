// Entry point: restores the session from sessionStorage, routes the hash (#/users, #/users/<id>,
// #/traces, #/status) to a view, and draws the shell (nav, sign-out, the error banner).
import { render, type ComponentChildren } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, api, clearToken, describeError, getToken, setUnauthorizedHandler, type WhoAmI } from './api';
import { SessionContext, tracesHref, userHref, type Session } from './common';
import { SignIn } from './signin';
import { StatusPage } from './status';
import { TracesPage } from './traces';
import { UserPage } from './user';
import { UsersPage } from './users';
import './styles.css';

type Route =
  | { view: 'home' }
  | { view: 'users' }
  | { view: 'user'; userId: string }
  | { view: 'traces'; user: string; request: string }
  | { view: 'status' }
  | { view: 'missing' };

function parseHash(hash: string): Route {
  const raw = hash.replace(/^#/, '');
  const q = raw.indexOf('?');
  const path = (q < 0 ? raw : raw.slice(0, q)).replace(/\/+$/, '');
  const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  if (path === '') return { view: 'home' };
  if (path === '/users') return { view: 'users' };
  if (path === '/traces') return { view: 'traces', user: params.get('user') ?? '', request: params.get('request') ?? '' };
  if (path === '/status') return { view: 'status' };
  const user = /^\/users\/(.+)$/.exec(path);
  if (user?.[1] !== undefined) {
    try {
      return { view: 'user', userId: decodeURIComponent(user[1]) };
    } catch {
      return { view: 'missing' };
    }
  }
  return { view: 'missing' };
}

function useRoute(): Route {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const onChange = () => setHash(location.hash);
    addEventListener('hashchange', onChange);
    return () => removeEventListener('hashchange', onChange);
  }, []);
  return useMemo(() => parseHash(hash), [hash]);
}

/** Where a route goes for this caller: a bound key only ever sees its own user (and its traces). */
function redirectFor(route: Route, who: WhoAmI): string | null {
  const bound = !who.admin && who.user_id !== null ? who.user_id : null;
  if (bound !== null) {
    if (route.view === 'traces') return route.user === bound ? null : tracesHref({ user: bound, request: route.request });
    if (route.view === 'user' && route.userId === bound) return null;
    return userHref(bound);
  }
  return route.view === 'home' ? '#/users' : null;
}

type Auth = { state: 'checking' } | { state: 'signedOut'; message: string | null; attempt: number } | { state: 'signedIn'; who: WhoAmI };

function App() {
  const [auth, setAuth] = useState<Auth>(() =>
    getToken() === null ? { state: 'signedOut', message: null, attempt: 0 } : { state: 'checking' },
  );
  const [error, setError] = useState<string | null>(null);
  const route = useRoute();
  const signedIn = useRef(false);
  signedIn.current = auth.state === 'signedIn';

  const signOut = (message: string | null) => {
    clearToken();
    setError(null);
    setAuth((a) => ({ state: 'signedOut', message, attempt: a.state === 'signedOut' ? a.attempt + 1 : 0 }));
  };

  useEffect(() => {
    setUnauthorizedHandler(() => {
      if (signedIn.current) signOut('Token refused');
    });
    if (auth.state === 'checking') {
      api
        .whoami()
        .then((who) => setAuth({ state: 'signedIn', who }))
        .catch((err: unknown) => signOut(err instanceof ApiError && err.status === 401 ? 'Token refused' : describeError(err)));
    }
    return () => setUnauthorizedHandler(null);
  }, []);

  // Leaving a page hides the error it showed.
  useEffect(() => setError(null), [route]);

  const session = useMemo<Session | null>(() => {
    if (auth.state !== 'signedIn') return null;
    const who = auth.who;
    return {
      who,
      boundUser: !who.admin && who.user_id !== null ? who.user_id : null,
      report: (err) => {
        if (err instanceof ApiError && err.status === 401) return; // the shell signs out
        setError(describeError(err));
      },
      clearError: () => setError(null),
    };
  }, [auth]);

  const redirect = session ? redirectFor(route, session.who) : null;
  useEffect(() => {
    // Decided again from the hash as it is now: it may have changed since this render.
    const target = session ? redirectFor(parseHash(location.hash), session.who) : null;
    if (target !== null) location.replace(target);
  }, [redirect]);

  if (auth.state === 'checking') return <p class="loading">Loading…</p>;
  if (auth.state === 'signedOut' || !session) {
    return (
      <SignIn
        key={auth.state === 'signedOut' ? auth.attempt : -1}
        message={auth.state === 'signedOut' ? auth.message : null}
        onSignedIn={(who) => setAuth({ state: 'signedIn', who })}
      />
    );
  }

  return (
    <SessionContext.Provider value={session}>
      <Shell route={route} session={session} onSignOut={() => signOut(null)}>
        {error !== null && (
          <div class="banner" role="alert" data-testid="error-banner">
            <span>{error}</span>
            <button type="button" class="link" aria-label="Dismiss" onClick={() => setError(null)}>
              ×
            </button>
          </div>
        )}
        {redirect === null && <View route={route} />}
      </Shell>
    </SessionContext.Provider>
  );
}

function View({ route }: { route: Route }) {
  switch (route.view) {
    case 'users':
      return <UsersPage />;
    case 'user':
      return <UserPage key={route.userId} userId={route.userId} />;
    case 'traces':
      return <TracesPage key={`${route.user}\n${route.request}`} user={route.user} request={route.request} />;
    case 'status':
      return <StatusPage />;
    case 'home':
      return null;
    case 'missing':
      return (
        <section>
          <h1>Not found</h1>
          <p>
            There is no such page. <a href="#/">Go to the start page</a>.
          </p>
        </section>
      );
  }
}

function Shell({
  route,
  session,
  onSignOut,
  children,
}: {
  route: Route;
  session: Session;
  onSignOut: () => void;
  children: ComponentChildren;
}) {
  const current = (view: Route['view']) => (route.view === view ? 'page' : undefined);
  const bound = session.boundUser;
  return (
    <>
      <header class="top">
        <span class="brand">Memory console</span>
        <nav>
          {bound === null ? (
            <>
              <a href="#/users" data-testid="nav-users" aria-current={current('users') ?? current('user')}>
                Users
              </a>
              <a href="#/traces" data-testid="nav-traces" aria-current={current('traces')}>
                Requests
              </a>
              <a href="#/status" data-testid="nav-status" aria-current={current('status')}>
                Status
              </a>
            </>
          ) : (
            <>
              <a href={userHref(bound)} data-testid="nav-user" aria-current={current('user')}>
                Memories
              </a>
              <a href={tracesHref({ user: bound })} data-testid="nav-traces" aria-current={current('traces')}>
                Requests
              </a>
            </>
          )}
        </nav>
        <span class="who" data-testid="whoami">
          {session.who.caller}
          <span class="muted">{session.who.admin ? ' · admin' : bound !== null ? ` · bound to ${bound}` : ''}</span>
        </span>
        <button type="button" data-testid="signout" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main class="page">{children}</main>
    </>
  );
}

const root = document.getElementById('app');
if (root) {
  root.textContent = '';
  render(<App />, root);
}
