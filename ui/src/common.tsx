// What the views share: the session context (who is signed in, the error banner's report/clear),
// formatting of server values as plain text, and hash links.
import { createContext } from 'preact';
import { useContext, useRef } from 'preact/hooks';
import type { WhoAmI } from './api';

export interface Session {
  who: WhoAmI;
  /** The one user a bound key may see; null for an admin (or unbound) key. */
  boundUser: string | null;
  /** Shows an error in the banner (a 401 is handled by the shell instead). */
  report: (err: unknown) => void;
  /** Hides the banner (at the start of a user's action). */
  clearError: () => void;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error('useSession outside a signed-in shell');
  return session;
}

/**
 * Guards against out-of-order answers: `begin()` returns a check that is true only while no later
 * `begin()` happened (so a slow old answer never overwrites a newer one).
 */
export function useLatest(): () => () => boolean {
  const seq = useRef(0);
  return () => {
    const mine = ++seq.current;
    return () => seq.current === mine;
  };
}

/** Any server value as display text (strings as they are, the rest as JSON). */
export function text(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return JSON.stringify(value);
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

/** An ISO time as "YYYY-MM-DD HH:MM:SS" UTC, or "—". */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return text(iso);
  return (
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`
  );
}

export function Time({ iso }: { iso: string | null | undefined }) {
  if (!iso) return <span class="muted">—</span>;
  return (
    <time dateTime={text(iso)} title={`${text(iso)} (times are UTC)`}>
      {formatTime(iso)}
    </time>
  );
}

export function formatScore(score: unknown): string {
  return typeof score === 'number' ? score.toFixed(3) : '—';
}

export function formatMs(ms: number | null | undefined): string {
  return typeof ms === 'number' ? `${ms.toFixed(1)} ms` : '—';
}

/** The hash link of a user's page (the id is percent-encoded, so it can never leave the hash). */
export function userHref(userId: string): string {
  return `#/users/${encodeURIComponent(userId)}`;
}

export function tracesHref(filters: { user?: string; request?: string }): string {
  const q = new URLSearchParams();
  if (filters.user) q.set('user', filters.user);
  if (filters.request) q.set('request', filters.request);
  const qs = q.toString();
  return qs ? `#/traces?${qs}` : '#/traces';
}

/** "x–y of N" for a page of `count` rows at `offset`. */
export function rangeText(offset: number, count: number, total?: number): string {
  const range = count === 0 ? `${offset}–${offset}` : `${offset + 1}–${offset + count}`;
  return total === undefined ? range : `${range} of ${total}`;
}
