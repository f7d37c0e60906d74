/**
 * Scopes (user_id, agent_id, run_id): the partition a filter can be answered from, a payload's
 * scope columns and keys, and payloads as stored (camelCase scope keys normalized, JSON parsed).
 */
import { isPlainObject, type Filters, type Payload } from './filters';

export const SCOPE_FIELDS = ['user_id', 'agent_id', 'run_id'] as const;
export type ScopeField = (typeof SCOPE_FIELDS)[number];
const CAMEL_SCOPE: ReadonlyArray<readonly [string, ScopeField]> = [
  ['userId', 'user_id'],
  ['agentId', 'agent_id'],
  ['runId', 'run_id'],
];

export interface Scope {
  field: ScopeField;
  value: string;
  key: string;
}

export function scopeKey(field: ScopeField, value: string): string {
  return `${field}\u0000${value}`;
}

export function splitScopeKey(key: string): [ScopeField, string] {
  const at = key.indexOf('\u0000');
  return [key.slice(0, at) as ScopeField, key.slice(at + 1)];
}

/**
 * The partition a filtered query can be answered from: a top-level equality on a scope field.
 * Top-level conditions are ANDed, so every matching row lies in that partition. user_id is
 * preferred because user partitions are the ones reused across requests.
 */
export function pickScope(filters: Filters | undefined): Scope | null {
  if (!filters) return null;
  for (const field of SCOPE_FIELDS) {
    const value = filters[field];
    if (typeof value === 'string' && value !== '*') return { field, value, key: scopeKey(field, value) };
  }
  return null;
}

/** Whether a filter constrains anything beyond the given scope field (then rows must be checked). */
export function hasResidualFilter(filters: Filters | undefined, scopeField: ScopeField): boolean {
  if (!filters) return false;
  return Object.keys(filters).some((k) => k !== scopeField);
}

export function normalizePayload(payload: Payload): Payload {
  const out: Payload = { ...payload };
  for (const [camel, snake] of CAMEL_SCOPE) {
    if (camel in out && !(snake in out)) {
      out[snake] = out[camel];
      delete out[camel];
    }
  }
  return out;
}

export function scopeColumns(payload: Payload): [string | null, string | null, string | null] {
  const col = (v: unknown): string | null => (typeof v === 'string' ? v : null);
  return [col(payload.user_id), col(payload.agent_id), col(payload.run_id)];
}

export function scopeKeysOf(cols: readonly (string | null)[]): string[] {
  const keys: string[] = [];
  SCOPE_FIELDS.forEach((field, i) => {
    const v = cols[i];
    if (typeof v === 'string') keys.push(scopeKey(field, v));
  });
  return keys;
}

export function parsePayload(json: string): Payload {
  const parsed: unknown = JSON.parse(json);
  return isPlainObject(parsed) ? parsed : {};
}
