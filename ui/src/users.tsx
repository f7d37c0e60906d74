// The users list (admin): search by user-id substring (on the server), a table, Prev/Next paging.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, type UserList } from './api';
import { Time, rangeText, useLatest, useSession, userHref } from './common';

const PAGE = 50;

export function UsersPage() {
  const { report, clearError } = useSession();
  const [input, setInput] = useState('');
  const [query, setQuery] = useState('');
  const [offset, setOffset] = useState(0);
  const [data, setData] = useState<UserList | null>(null);
  const [loading, setLoading] = useState(false);
  const begin = useLatest();
  const debounce = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);

  useEffect(() => {
    const current = begin();
    setLoading(true);
    api
      .users({ ...(query ? { query } : {}), limit: PAGE, offset })
      .then((res) => current() && setData(res))
      .catch((err: unknown) => current() && report(err))
      .finally(() => current() && setLoading(false));
  }, [query, offset]);

  useEffect(() => () => clearTimeout(debounce.current), []);

  const apply = (value: string) => {
    clearTimeout(debounce.current);
    clearError();
    setQuery(value.trim());
    setOffset(0);
  };

  const onInput = (value: string) => {
    setInput(value);
    clearTimeout(debounce.current);
    debounce.current = setTimeout(() => apply(value), 300);
  };

  const users = data?.users ?? [];
  const total = data?.total ?? 0;
  return (
    <section>
      <div class="heading">
        <h1>Users</h1>
        {/* biome-ignore lint/a11y/useSemanticElements: role="search" on the form is the landmark; a <search> element would be a new box around it in the heading's flex row, a layout change. */}
        <form
          class="inline"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            apply(input);
          }}
        >
          <input
            type="search"
            data-testid="users-search"
            aria-label="Filter users by id"
            placeholder="Filter by user id…"
            value={input}
            onInput={(e) => onInput(e.currentTarget.value)}
          />
        </form>
      </div>
      <table class="grid">
        <thead>
          <tr>
            <th>User</th>
            <th class="num">Memories</th>
            <th>Last activity (UTC)</th>
          </tr>
        </thead>
        <tbody>
          {users.map((u) => (
            <tr key={u.user_id} data-testid="user-row">
              <td>
                <a href={userHref(u.user_id)} data-testid="user-link">
                  {u.user_id}
                </a>
              </td>
              <td class="num" data-testid="user-count">
                {u.memories}
              </td>
              <td data-testid="user-activity">
                <Time iso={u.last_activity} />
              </td>
            </tr>
          ))}
          {data && users.length === 0 && (
            <tr>
              <td colSpan={3} class="empty">
                {query ? 'No user id contains that text.' : 'No users yet.'}
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <div class="pager">
        <button
          type="button"
          data-testid="users-prev"
          disabled={offset === 0 || loading}
          onClick={() => setOffset(Math.max(0, offset - PAGE))}
        >
          ‹ Prev
        </button>
        <span data-testid="users-range">{data ? rangeText(offset, users.length, total) : loading ? 'Loading…' : ''}</span>
        <button
          type="button"
          data-testid="users-next"
          disabled={loading || offset + users.length >= total}
          onClick={() => setOffset(offset + PAGE)}
        >
          Next ›
        </button>
      </div>
    </section>
  );
}
