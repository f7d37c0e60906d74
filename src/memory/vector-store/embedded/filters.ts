/**
 * mem0 filters: whether a payload matches a filter object (same semantics as mem0ai's
 * MemoryVectorStore, with the fixes noted inline).
 */

export type Payload = Record<string, unknown>;
export type Filters = Record<string, unknown>;

const LOGICAL_KEYS = new Map<string, 'AND' | 'OR' | 'NOT'>([
  ['AND', 'AND'],
  ['OR', 'OR'],
  ['NOT', 'NOT'],
  ['$and', 'AND'],
  ['$or', 'OR'],
  ['$not', 'NOT'],
]);
const OPERATORS = new Set(['eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'in', 'nin', 'contains', 'icontains']);

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((v, i) => deepEqual(v, b[i]));
  }
  if (isPlainObject(a) && isPlainObject(b)) {
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    return ka.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
  }
  return false;
}

/** Ordering only between values of the same primitive type: the built-in's JS coercion ("10" > 9) is not kept. */
function compare(a: unknown, b: unknown): number | null {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'string' && typeof b === 'string') return a < b ? -1 : a > b ? 1 : 0;
  return null;
}

function applyOperator(op: string, value: unknown, arg: unknown): boolean {
  switch (op) {
    case 'eq':
      return value === arg;
    case 'ne':
      return value !== arg;
    case 'gt': {
      const c = compare(value, arg);
      return c !== null && c > 0;
    }
    case 'gte': {
      const c = compare(value, arg);
      return c !== null && c >= 0;
    }
    case 'lt': {
      const c = compare(value, arg);
      return c !== null && c < 0;
    }
    case 'lte': {
      const c = compare(value, arg);
      return c !== null && c <= 0;
    }
    case 'in':
      return Array.isArray(arg) && arg.includes(value);
    case 'nin':
      // Same as the built-in: a malformed (non-array) `nin` excludes nothing.
      return !Array.isArray(arg) || !arg.includes(value);
    case 'contains':
      if (typeof value === 'string') return typeof arg === 'string' && value.includes(arg);
      // Extension: arrays in payloads (e.g. linkedMemoryIds) can be tested for membership.
      return Array.isArray(value) && value.includes(arg);
    case 'icontains':
      return typeof value === 'string' && typeof arg === 'string' && value.toLowerCase().includes(arg.toLowerCase());
    default:
      throw new Error(`Unsupported filter operator: ${op}`);
  }
}

function matchField(value: unknown, condition: unknown): boolean {
  if (condition === '*') return true; // wildcard: every value matches, even a missing field (as the built-in)
  // Plain values compare with ===. An `undefined` condition therefore only matches rows without
  // the field (built-in behaviour), so a caller's missing user id never widens a search to all users.
  if (typeof condition !== 'object' || condition === null) return value === condition;
  if (Array.isArray(condition)) return condition.includes(value);
  const keys = Object.keys(condition);
  const known = keys.filter((k) => OPERATORS.has(k));
  if (known.length === 0) return deepEqual(value, condition); // a literal object value
  if (known.length !== keys.length) {
    throw new Error(`Unsupported filter operator(s): ${keys.filter((k) => !OPERATORS.has(k)).join(', ')}`);
  }
  // All operators must hold (the built-in only checks the first one, so ranges {gte, lte} were half-applied).
  for (const op of keys) {
    if (!applyOperator(op, value, (condition as Record<string, unknown>)[op])) return false;
  }
  return true;
}

function asFilterList(kind: string, value: unknown): Filters[] {
  if (!Array.isArray(value)) {
    throw new Error(`${kind} filter value must be a list of filter objects, got ${typeof value}`);
  }
  return value.map((sub) => {
    if (!isPlainObject(sub)) throw new Error(`${kind} filter entries must be objects`);
    return sub;
  });
}

/** True when `payload` satisfies every condition of `filters` (an empty or missing filter matches all). */
export function matchesFilters(payload: Payload, filters: Filters | undefined): boolean {
  if (!filters) return true;
  for (const key of Object.keys(filters)) {
    const condition = filters[key];
    const logical = LOGICAL_KEYS.get(key);
    if (logical === 'AND') {
      if (!asFilterList(logical, condition).every((sub) => matchesFilters(payload, sub))) return false;
    } else if (logical === 'OR') {
      if (!asFilterList(logical, condition).some((sub) => matchesFilters(payload, sub))) return false;
    } else if (logical === 'NOT') {
      if (asFilterList(logical, condition).some((sub) => matchesFilters(payload, sub))) return false;
    } else if (!matchField(payload[key], condition)) {
      return false;
    }
  }
  return true;
}

export function asFilters(filters: unknown): Filters | undefined {
  if (filters === undefined || filters === null) return undefined;
  if (!isPlainObject(filters)) throw new Error('filters must be an object');
  return filters;
}
