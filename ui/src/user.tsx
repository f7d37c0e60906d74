// One user's page: filtered, paged memory list (or semantic search results), inline edit, delete
// one / selected / all (each through the confirm dialog), JSON export, the injection preview and
// the user's recent requests.
import { useEffect, useState } from 'preact/hooks';
import { api, type Json, type ListQuery, type Memory } from './api';
import { ConfirmDialog, type ConfirmRequest } from './confirm';
import { Time, formatScore, rangeText, text, tracesHref, useLatest, useSession } from './common';
import { PreviewPanel } from './preview';
import { RecentRequests } from './traces';

const PAGE = 50;
const FORGET_BATCH = 1000;

interface Filters {
  text: string;
  agent: string;
  run: string;
  since: string; // YYYY-MM-DD from <input type=date>
  until: string;
}

const NO_FILTERS: Filters = { text: '', agent: '', run: '', since: '', until: '' };

type Mode = { kind: 'list' } | { kind: 'search'; query: string };

/** A YYYY-MM-DD day plus `days`, as an ISO time at 00:00 UTC; undefined when not a date. */
function dayStart(day: string, days = 0): string | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(day);
  if (!m) return undefined;
  return new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]) + days)).toISOString();
}

function listQuery(userId: string, f: Filters, offset: number): ListQuery {
  const q: ListQuery = { user_id: userId, limit: PAGE, offset };
  if (f.text.trim()) q.text = f.text.trim();
  if (f.agent.trim()) q.agent_id = f.agent.trim();
  if (f.run.trim()) q.run_id = f.run.trim();
  const since = dayStart(f.since);
  if (since) q.since = since;
  const until = dayStart(f.until, 1); // the "to" day is included: until the next day's start
  if (until) q.until = until;
  return q;
}

/** How many memories the user has: from /users for an admin, else by paging /list. */
async function memoryCount(userId: string, admin: boolean): Promise<number> {
  if (admin) {
    for (let offset = 0; ; offset += 1000) {
      const page = await api.users({ query: userId, limit: 1000, offset });
      const hit = page.users.find((u) => u.user_id === userId);
      if (hit) return hit.memories;
      if (page.users.length === 0 || offset + page.users.length >= page.total) return 0;
    }
  }
  let count = 0;
  for (let offset = 0; ; offset += 1000) {
    const page = await api.list({ user_id: userId, limit: 1000, offset });
    count += page.memories.length;
    if (page.memories.length < 1000) return count;
  }
}

export function UserPage({ userId }: { userId: string }) {
  const { who, report, clearError } = useSession();
  const [form, setForm] = useState<Filters>(NO_FILTERS);
  const [filters, setFilters] = useState<Filters>(NO_FILTERS);
  const [searchText, setSearchText] = useState('');
  const [mode, setMode] = useState<Mode>({ kind: 'list' });
  const [offset, setOffset] = useState(0);
  const [reload, setReload] = useState(0);
  const [memories, setMemories] = useState<Memory[] | null>(null);
  const [loading, setLoading] = useState(false);
  const [selected, setSelected] = useState<ReadonlySet<string>>(new Set());
  const [confirm, setConfirm] = useState<ConfirmRequest | null>(null);
  const [busy, setBusy] = useState(false);
  const begin = useLatest();

  useEffect(() => {
    const current = begin();
    setLoading(true);
    const load = mode.kind === 'search' ? api.search(userId, mode.query, PAGE) : api.list(listQuery(userId, filters, offset));
    load
      .then((res) => {
        if (!current()) return;
        // A page emptied by deletes steps back to the one before it.
        if (mode.kind === 'list' && res.memories.length === 0 && offset > 0) setOffset(Math.max(0, offset - PAGE));
        setMemories(res.memories);
      })
      .catch((err: unknown) => current() && report(err))
      .finally(() => current() && setLoading(false));
  }, [userId, mode, filters, offset, reload]);

  const refresh = () => setReload((n) => n + 1);

  /** Runs a user's action: hides the old error, reports a new one. */
  const act = async (action: () => Promise<void>): Promise<boolean> => {
    clearError();
    setBusy(true);
    try {
      await action();
      return true;
    } catch (err) {
      report(err);
      return false;
    } finally {
      setBusy(false);
    }
  };

  /** Deletes one memory (`memory_id`) or a selection (`memory_ids`, in batches of 1000). */
  const forget = (ids: string[], one: boolean) =>
    act(async () => {
      try {
        if (one && ids[0] !== undefined) await api.forgetOne(userId, ids[0]);
        else for (let i = 0; i < ids.length; i += FORGET_BATCH) await api.forgetMany(userId, ids.slice(i, i + FORGET_BATCH));
      } finally {
        setSelected((s) => new Set([...s].filter((id) => !ids.includes(id))));
        refresh();
      }
    });

  const askDeleteOne = (m: Memory) =>
    setConfirm({
      title: 'Delete memory',
      text: `Delete this memory? “${text(m.memory)}”`,
      okLabel: 'Delete',
      onConfirm: () => void forget([m.id], true),
    });

  const askDeleteSelected = () => {
    const ids = [...selected];
    setConfirm({
      title: 'Delete selected memories',
      text: `Delete ${ids.length} selected ${ids.length === 1 ? 'memory' : 'memories'} of ${userId}?`,
      okLabel: `Delete ${ids.length}`,
      onConfirm: () => void forget(ids, false),
    });
  };

  const askDeleteAll = () =>
    act(async () => {
      const count = await memoryCount(userId, who.admin);
      setConfirm({
        title: 'Delete all memories',
        text: `Delete all ${count} ${count === 1 ? 'memory' : 'memories'} of ${userId}?`,
        okLabel: 'Delete all',
        requireText: userId,
        onConfirm: () =>
          void act(async () => {
            try {
              await api.forgetAll(userId);
            } finally {
              setSelected(new Set());
              setOffset(0);
              refresh();
            }
          }),
      });
    });

  const exportJson = () =>
    act(async () => {
      const blob = await api.exportBlob(userId);
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.download = `memories-${userId.replace(/[^A-Za-z0-9._-]/g, '_')}.json`; // the server's file name
      a.href = url;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    });

  const save = (id: string, newText: string) =>
    act(async () => {
      const res = await api.update(userId, id, newText);
      const updated = res.memories[0];
      if (updated) setMemories((list) => list?.map((m) => (m.id === id ? { ...m, ...updated } : m)) ?? null);
      else refresh();
    });

  const toggle = (ids: string[], on: boolean) =>
    setSelected((s) => {
      const next = new Set(s);
      for (const id of ids) {
        if (on) next.add(id);
        else next.delete(id);
      }
      return next;
    });

  const rows = memories ?? [];
  const searching = mode.kind === 'search';
  return (
    <section>
      <div class="heading">
        <h1 data-testid="user-title">{userId}</h1>
        <div class="toolbar">
          <button type="button" data-testid="export-json" disabled={busy} onClick={exportJson}>
            Export JSON
          </button>
          <button
            type="button"
            class="danger"
            data-testid="delete-selected"
            disabled={busy || selected.size === 0}
            onClick={askDeleteSelected}
          >
            Delete selected ({selected.size})
          </button>
          <button type="button" class="danger" data-testid="delete-all" disabled={busy} onClick={askDeleteAll}>
            Delete all
          </button>
        </div>
      </div>

      <div class="panels">
        <form
          class="filters"
          onSubmit={(e) => {
            e.preventDefault();
            clearError();
            setFilters({ ...form });
            setOffset(0);
            setMode({ kind: 'list' });
          }}
        >
          <FilterInput label="Text" testid="filter-text" value={form.text} onInput={(v) => setForm({ ...form, text: v })} />
          <FilterInput label="Agent" testid="filter-agent" value={form.agent} onInput={(v) => setForm({ ...form, agent: v })} />
          <FilterInput label="Run" testid="filter-run" value={form.run} onInput={(v) => setForm({ ...form, run: v })} />
          <FilterInput label="From" type="date" testid="filter-since" value={form.since} onInput={(v) => setForm({ ...form, since: v })} />
          <FilterInput label="To" type="date" testid="filter-until" value={form.until} onInput={(v) => setForm({ ...form, until: v })} />
          <button type="submit" data-testid="filter-apply">
            Apply filters
          </button>
        </form>

        {/* biome-ignore lint/a11y/useSemanticElements: role="search" on the form is the landmark; a <search> element would be a new box around it in the panels' flex row, a layout change. */}
        <form
          class="search"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            clearError();
            const query = searchText.trim();
            setMode(query ? { kind: 'search', query } : { kind: 'list' });
          }}
        >
          <label class="field">
            <span>Semantic search</span>
            <input
              type="search"
              data-testid="search-input"
              placeholder="What does the user like?"
              value={searchText}
              onInput={(e) => setSearchText(e.currentTarget.value)}
            />
          </label>
          <button type="submit" data-testid="search-submit">
            Search
          </button>
          <button
            type="button"
            data-testid="search-clear"
            disabled={!searching}
            onClick={() => {
              clearError();
              setSearchText('');
              setMode({ kind: 'list' });
            }}
          >
            Back to list
          </button>
        </form>
      </div>

      <p class="caption">
        {searching ? `Search results for “${mode.query}” (best first)` : 'Memories (oldest first)'}
        {loading && <span class="muted"> · loading…</span>}
      </p>
      <MemoryTable
        memories={rows}
        loaded={memories !== null}
        showScore={searching}
        selected={selected}
        onToggle={toggle}
        onSave={save}
        onDelete={askDeleteOne}
      />
      {!searching && (
        <div class="pager">
          <button
            type="button"
            data-testid="memories-prev"
            disabled={loading || offset === 0}
            onClick={() => setOffset(Math.max(0, offset - PAGE))}
          >
            ‹ Prev
          </button>
          <span data-testid="memories-range">{memories ? rangeText(offset, rows.length) : ''}</span>
          <button
            type="button"
            data-testid="memories-next"
            disabled={loading || rows.length < PAGE}
            onClick={() => setOffset(offset + PAGE)}
          >
            Next ›
          </button>
        </div>
      )}

      <PreviewPanel userId={userId} />
      <RecentRequests userId={userId} />
      {confirm && <ConfirmDialog request={confirm} onClose={() => setConfirm(null)} />}
    </section>
  );
}

function FilterInput(props: { label: string; testid: string; value: string; type?: 'text' | 'date'; onInput: (value: string) => void }) {
  return (
    <label class="field">
      <span>{props.label}</span>
      <input
        type={props.type ?? 'text'}
        data-testid={props.testid}
        value={props.value}
        onInput={(e) => props.onInput(e.currentTarget.value)}
      />
    </label>
  );
}

function MemoryTable(props: {
  memories: Memory[];
  loaded: boolean;
  showScore: boolean;
  selected: ReadonlySet<string>;
  onToggle: (ids: string[], on: boolean) => void;
  /** Resolves true when saved (false keeps the editor open; the error is in the banner). */
  onSave: (id: string, text: string) => Promise<boolean>;
  onDelete: (m: Memory) => void;
}) {
  const [editing, setEditing] = useState<{ id: string; draft: string; saving: boolean } | null>(null);
  const ids = props.memories.map((m) => m.id);
  const allOn = ids.length > 0 && ids.every((id) => props.selected.has(id));

  const save = async () => {
    if (!editing) return;
    const current = editing;
    setEditing({ ...current, saving: true });
    const saved = await props.onSave(current.id, current.draft);
    setEditing(saved ? null : { ...current, saving: false });
  };

  return (
    <table class="grid memories">
      <thead>
        <tr>
          <th class="check">
            <input
              type="checkbox"
              aria-label="Select all on this page"
              data-testid="memory-select-all"
              checked={allOn}
              disabled={ids.length === 0}
              onChange={(e) => props.onToggle(ids, e.currentTarget.checked)}
            />
          </th>
          {props.showScore && <th class="num">Score</th>}
          <th>Memory</th>
          <th>Metadata</th>
          <th>Agent / run</th>
          <th>Created (UTC)</th>
          <th>Updated (UTC)</th>
          <th />
        </tr>
      </thead>
      <tbody>
        {props.memories.map((m) => {
          const edit = editing?.id === m.id ? editing : null;
          return (
            <tr key={m.id} data-testid="memory-row" data-memory-id={m.id}>
              <td class="check">
                <input
                  type="checkbox"
                  aria-label="Select memory"
                  data-testid="memory-select"
                  checked={props.selected.has(m.id)}
                  onChange={(e) => props.onToggle([m.id], e.currentTarget.checked)}
                />
              </td>
              {props.showScore &&
                (typeof m.score === 'number' ? (
                  <td class="num" data-testid="memory-score">
                    {formatScore(m.score)}
                  </td>
                ) : (
                  <td />
                ))}
              {edit ? (
                <td class="memory-cell">
                  <textarea
                    data-testid="memory-edit-input"
                    aria-label="Memory text"
                    rows={3}
                    value={edit.draft}
                    disabled={edit.saving}
                    onInput={(e) => setEditing({ ...edit, draft: e.currentTarget.value })}
                  />
                  <div class="actions">
                    <button
                      type="button"
                      class="primary"
                      data-testid="memory-edit-save"
                      disabled={edit.saving || edit.draft.trim() === ''}
                      onClick={() => void save()}
                    >
                      Save
                    </button>
                    <button type="button" data-testid="memory-edit-cancel" disabled={edit.saving} onClick={() => setEditing(null)}>
                      Cancel
                    </button>
                  </div>
                </td>
              ) : (
                <td class="memory-cell" data-testid="memory-text">
                  {text(m.memory)}
                </td>
              )}
              <td>
                <Metadata metadata={m.metadata} />
              </td>
              <td class="small">
                {m.agent_id || m.run_id ? (
                  <>
                    {m.agent_id && <Field label="agent" value={m.agent_id} />}
                    {m.run_id && <Field label="run" value={m.run_id} />}
                  </>
                ) : (
                  <span class="muted">—</span>
                )}
              </td>
              <td class="small nowrap">
                <Time iso={m.created_at} />
              </td>
              <td class="small nowrap">
                <Time iso={m.updated_at} />
              </td>
              <td class="row-actions">
                <button
                  type="button"
                  data-testid="memory-edit"
                  disabled={edit !== null}
                  onClick={() => setEditing({ id: m.id, draft: text(m.memory), saving: false })}
                >
                  Edit
                </button>
                <button type="button" class="danger" data-testid="memory-delete" onClick={() => props.onDelete(m)}>
                  Delete
                </button>
              </td>
            </tr>
          );
        })}
        {props.loaded && props.memories.length === 0 && (
          <tr>
            <td colSpan={props.showScore ? 8 : 7} class="empty">
              {props.showScore ? 'Nothing found.' : 'No memories match.'}
            </td>
          </tr>
        )}
      </tbody>
    </table>
  );
}

const KNOWN: [key: string, label: string][] = [
  ['source', 'source'],
  ['model', 'model'],
  ['request_id', 'request'],
  ['session_id', 'session'],
];

function Field({ label, value }: { label: string; value: unknown }) {
  return (
    <span class="meta">
      <span class="meta-key">{label}</span> <span class="meta-value">{text(value)}</span>
    </span>
  );
}

function Metadata({ metadata }: { metadata: Memory['metadata'] }) {
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
    return metadata === null || metadata === undefined ? <span class="muted">—</span> : <Field label="metadata" value={metadata} />;
  }
  const known = new Set(KNOWN.map(([k]) => k));
  const other = Object.entries(metadata).filter(([k]) => !known.has(k));
  const requestId = metadata.request_id;
  return (
    <div class="metadata">
      {KNOWN.map(([key, label]) => {
        const value: Json | undefined = metadata[key];
        if (value === undefined || value === null || value === '') return null;
        if (key === 'request_id' && typeof requestId === 'string') {
          // A button, not a link: memory-derived text never goes into an href.
          return (
            <span class="meta" key={key}>
              <span class="meta-key">{label}</span>{' '}
              <button
                type="button"
                class="link meta-value"
                data-testid="memory-request-link"
                title="Show this request"
                onClick={() => {
                  location.hash = tracesHref({ request: requestId });
                }}
              >
                {requestId}
              </button>
            </span>
          );
        }
        return <Field key={key} label={label} value={value} />;
      })}
      {other.map(([key, value]) => (
        <span class="meta" key={key}>
          <span class="meta-key">{key}:</span> <span class="meta-value">{JSON.stringify(value)}</span>
        </span>
      ))}
    </div>
  );
}
