// The status page (admin): GET /stats, refreshed every 5 s while the page is open.
import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, type Stats } from './api';
import { formatMs, formatTime, useSession } from './common';

const REFRESH_MS = 5000;

function yesNo(v: boolean): string {
  return v ? 'yes' : 'no';
}

function count(n: number | undefined): string {
  return n === undefined ? '—' : String(n);
}

export function StatusPage() {
  const { report, clearError } = useSession();
  const [stats, setStats] = useState<Stats | null>(null);
  const [at, setAt] = useState<string | null>(null);

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = async () => {
      try {
        const next = await api.stats();
        if (stopped) return;
        setStats(next);
        setAt(new Date().toISOString());
        clearError();
      } catch (err) {
        if (!stopped) report(err);
      }
      if (!stopped) timer = setTimeout(() => void tick(), REFRESH_MS);
    };
    void tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, []);

  const q = stats?.save_queue ?? null;
  return (
    <section>
      <div class="heading">
        <h1>Status</h1>
        <span class="muted" data-testid="status-updated">
          {at ? `Updated ${formatTime(at)} UTC · every 5 s` : 'Loading…'}
        </span>
      </div>
      {stats && (
        <div class="cards">
          <Card title="Memory store">
            <Figure label="Backend" testid="status-backend" value={stats.memory.backend} />
            <Figure label="Available" testid="status-available" value={yesNo(stats.memory.available)} bad={!stats.memory.available} />
          </Card>
          <Card title="Save queue">
            {q === null && <div class="figure muted">No save queue: saves are not queued.</div>}
            <Figure label="Depth" testid="status-depth" value={count(q?.depth)} />
            <Figure label="Failures" testid="status-failures" value={count(q?.failures)} bad={!!q && q.failures > 0} />
            <Figure label="Dead" testid="status-dead" value={count(q?.dead)} bad={!!q && q.dead > 0} />
            <Figure
              label="Enqueue failures"
              testid="status-enqueue-failures"
              value={count(q?.enqueue_failures)}
              bad={!!q && q.enqueue_failures > 0}
            />
            <Figure label="Writable" testid="status-writable" value={q ? yesNo(q.writable) : '—'} bad={!!q && !q.writable} />
            <Figure label="Last error" testid="status-last-error" value={q?.last_error ?? '—'} bad={!!q && q.last_error !== null} />
          </Card>
          <Card title="Memory search">
            <Figure label="Searches" testid="status-search-count" value={String(stats.search.count)} />
            <Figure label="p50" testid="status-search-p50" value={formatMs(stats.search.p50_ms)} />
            <Figure label="p95" testid="status-search-p95" value={formatMs(stats.search.p95_ms)} />
          </Card>
          <Card title="Injection">
            <Figure label="Chats" testid="status-injected-chats" value={String(stats.injected.chats)} />
            <Figure
              label="Mean memories injected"
              testid="status-injected-mean"
              value={stats.injected.mean === null ? '—' : stats.injected.mean.toFixed(2)}
            />
          </Card>
        </div>
      )}
    </section>
  );
}

function Card({ title, children }: { title: string; children: ComponentChildren }) {
  return (
    <div class="card stat-card">
      <h2>{title}</h2>
      <dl>{children}</dl>
    </div>
  );
}

function Figure({ label, value, testid, bad }: { label: string; value: string; testid: string; bad?: boolean }) {
  return (
    <div class="figure">
      <dt>{label}</dt>
      <dd data-testid={testid} class={bad ? 'bad' : undefined}>
        {value}
      </dd>
    </div>
  );
}
