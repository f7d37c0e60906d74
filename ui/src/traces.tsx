// Request traces: the #/traces page (filter by user / request id, kept in the hash), the table
// both it and the user page's "Recent requests" use, and that section itself.
import { useEffect, useState } from 'preact/hooks';
import { api, type Trace, type TraceList } from './api';
import { Time, formatMs, formatScore, text, tracesHref, useLatest, useSession, userHref } from './common';

const LIMIT = 100;
const RECENT = 20;

export function TracesPage({ user, request }: { user: string; request: string }) {
  const { boundUser, report, clearError } = useSession();
  const [userInput, setUserInput] = useState(user);
  const [requestInput, setRequestInput] = useState(request);
  const [traces, setTraces] = useState<TraceList | null>(null);
  const [loading, setLoading] = useState(false);
  const [reload, setReload] = useState(0);
  const begin = useLatest();

  useEffect(() => {
    const current = begin();
    setLoading(true);
    api
      .traces({ ...(user ? { user_id: user } : {}), ...(request ? { request_id: request } : {}), limit: LIMIT })
      .then((res) => current() && setTraces(res))
      .catch((err: unknown) => current() && report(err))
      .finally(() => current() && setLoading(false));
  }, [user, request, reload]);

  const apply = (e: Event) => {
    e.preventDefault();
    clearError();
    const next = tracesHref({ user: (boundUser ?? userInput).trim(), request: requestInput.trim() });
    if (next === location.hash || (next === '#/traces' && location.hash === '')) setReload((n) => n + 1);
    else location.hash = next;
  };

  return (
    <section>
      <div class="heading">
        <h1>Requests</h1>
        <form class="inline" onSubmit={apply}>
          <input
            data-testid="traces-user"
            aria-label="User id"
            placeholder="User id"
            value={boundUser ?? userInput}
            disabled={boundUser !== null}
            onInput={(e) => setUserInput(e.currentTarget.value)}
          />
          <input
            data-testid="traces-request"
            aria-label="Request id"
            placeholder="Request id"
            value={requestInput}
            onInput={(e) => setRequestInput(e.currentTarget.value)}
          />
          <button type="submit" data-testid="traces-apply">
            Apply
          </button>
        </form>
      </div>
      <p class="caption">
        Newest first{traces ? ` · ${traces.traces.length} shown` : ''}
        {loading && <span class="muted"> · loading…</span>}
      </p>
      <TraceTable list={traces} showUser />
    </section>
  );
}

/** The user page's "Recent requests" section. */
export function RecentRequests({ userId }: { userId: string }) {
  const { report } = useSession();
  const [traces, setTraces] = useState<TraceList | null>(null);
  const [reload, setReload] = useState(0);
  const begin = useLatest();

  useEffect(() => {
    const current = begin();
    api
      .traces({ user_id: userId, limit: RECENT })
      .then((res) => current() && setTraces(res))
      .catch((err: unknown) => current() && report(err));
  }, [userId, reload]);

  return (
    <section class="panel">
      <div class="heading">
        <h2>Recent requests</h2>
        <div class="toolbar">
          <button type="button" data-testid="recent-refresh" onClick={() => setReload((n) => n + 1)}>
            Refresh
          </button>
          <a href={tracesHref({ user: userId })} data-testid="recent-all">
            All requests of this user
          </a>
        </div>
      </div>
      <TraceTable list={traces} showUser={false} />
    </section>
  );
}

export function TraceTable({ list, showUser }: { list: TraceList | null; showUser: boolean }) {
  const columns = showUser ? 9 : 8;
  const traces = list?.traces ?? null;
  return (
    <table class="grid traces">
      <thead>
        <tr>
          <th>Time (UTC)</th>
          <th>Request</th>
          <th>Caller</th>
          {showUser && <th>User</th>}
          <th>API / model</th>
          <th class="num">Search</th>
          <th>Injected</th>
          <th>Saved</th>
          <th>Prompt</th>
        </tr>
      </thead>
      <tbody>
        {(traces ?? []).map((t) => (
          <TraceRow key={t.request_id} trace={t} showUser={showUser} />
        ))}
        {traces && traces.length === 0 && (
          <tr>
            <td colSpan={columns} class="empty">
              {list?.enabled === false ? 'Request tracing is off on this server.' : 'No requests recorded.'}
            </td>
          </tr>
        )}
      </tbody>
    </table>
  );
}

function TraceRow({ trace: t, showUser }: { trace: Trace; showUser: boolean }) {
  const scores = new Map((t.recalled ?? []).map((r) => [r.id, r.score]));
  const injected = t.injected ?? [];
  const save = t.save ?? { status: 'none', memory_ids: [] };
  return (
    <tr data-testid="trace-row" data-request-id={t.request_id}>
      <td class="small nowrap">
        <Time iso={t.at} />
      </td>
      <td class="small mono">{text(t.request_id)}</td>
      <td class="small">{text(t.caller)}</td>
      {showUser && (
        <td class="small">
          {t.user_id ? (
            <a href={userHref(t.user_id)} data-testid="trace-user">
              {text(t.user_id)}
            </a>
          ) : (
            <span class="muted">—</span>
          )}
          {t.agent_id && <div class="muted">agent {text(t.agent_id)}</div>}
          {t.run_id && <div class="muted">run {text(t.run_id)}</div>}
        </td>
      )}
      <td class="small">
        {text(t.api)} <span class="muted">{text(t.route)}</span>
        <div>{t.model ? text(t.model) : <span class="muted">—</span>}</div>
      </td>
      <td class="num small nowrap">{formatMs(t.search_ms)}</td>
      <td class="small" data-testid="trace-injected">
        <span class="count">
          {injected.length} of {(t.recalled ?? []).length} recalled
        </span>
        <ul class="ids">
          {injected.map((id) => (
            <li key={id}>
              <span class="mono" data-testid="trace-memory-id">
                {text(id)}
              </span>
              {scores.has(id) && <span class="score"> {formatScore(scores.get(id))}</span>}
            </li>
          ))}
        </ul>
      </td>
      <td class="small">
        <span class={`status status-${text(save.status)}`} data-testid="trace-save">
          {text(save.status)}
        </span>
        {save.memory_ids.length > 0 && (
          <ul class="ids">
            {save.memory_ids.map((id) => (
              <li key={id} class="mono" data-testid="trace-saved-id">
                {text(id)}
              </li>
            ))}
          </ul>
        )}
        {save.error && <div class="error-text">{text(save.error)}</div>}
      </td>
      <td class="small">
        {t.prompt ? (
          <div class="prompt" title={text(t.prompt)}>
            {text(t.prompt)}
          </div>
        ) : (
          <span class="muted">—</span>
        )}
      </td>
    </tr>
  );
}
