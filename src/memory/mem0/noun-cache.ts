/**
 * A memo in front of compromise, the part-of-speech tagger mem0ai runs to find an entity's noun
 * phrases (`nlp(text).nouns().out('array')`, its only use of the library). A save tags every
 * extracted memory text twice: once when the entity oracle predicts the entity batch (so the
 * embeddings go out in one request), once when mem0 extracts the entities for real. Tagging is
 * the costliest local step of a save (≈ 2 ms a sentence here), and the same text always gives the
 * same nouns, so inside one save (`withNounMemo`) the second call is answered from the first.
 * Outside a save every call tags, as before: nothing is kept between requests.
 *
 * It has to sit in Node's module cache before mem0ai is loaded (mem0ai takes `require('compromise')`
 * once, at load). What `nlp(text)` returns is the real document, built on first use of anything but
 * `nouns().out('array')`, so any other use mem0 might make of it still works.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import path from 'node:path';

type Nlp = ((text: string, ...rest: unknown[]) => unknown) & Record<string, unknown>;

interface Doc {
  nouns(): { out(format: string): unknown };
}

function isDoc(value: unknown): value is Doc {
  return typeof value === 'object' && value !== null && typeof (value as { nouns?: unknown }).nouns === 'function';
}

const saves = new AsyncLocalStorage<Map<string, string[]>>();

/** Runs `fn` (one save) with its own memo of noun phrases by text, dropped when it ends. */
export function withNounMemo<T>(fn: () => Promise<T>): Promise<T> {
  return saves.run(new Map(), fn);
}

/** Wraps `nlp` so that inside `withNounMemo`, `nlp(text).nouns().out('array')` is computed once per text. */
export function memoizeNouns(nlp: Nlp): Nlp {
  const cached = (text: string, ...rest: unknown[]): unknown => {
    const memo = saves.getStore();
    if (memo === undefined || rest.length > 0 || typeof text !== 'string') return nlp(text, ...rest);
    let real: unknown;
    const doc = (): unknown => {
      real ??= nlp(text);
      return real;
    };
    const nounsOf = (): string[] => {
      let found = memo.get(text);
      if (found === undefined) {
        const d = doc();
        const out = isDoc(d) ? d.nouns().out('array') : undefined;
        if (!Array.isArray(out) || !out.every((n) => typeof n === 'string'))
          throw new Error('compromise: nouns().out("array") is not a list of strings');
        found = out;
        memo.set(text, found);
      }
      return found;
    };
    return new Proxy(
      {},
      {
        get(_target, prop) {
          if (prop === 'nouns') {
            return () => ({
              out: (format: string) => (format === 'array' ? [...nounsOf()] : (doc() as Doc).nouns().out(format)),
            });
          }
          const d = doc() as object;
          const value: unknown = Reflect.get(d, prop, d);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(d) : value;
        },
      },
    );
  };
  // The library's own helpers (plugin, extend, tokenize, ...) stay reachable.
  return Object.assign(cached, nlp);
}

/**
 * Puts the memo in Node's module cache as the `compromise` that mem0ai will require. Does nothing
 * where there is no such cache (a test runner's own module registry) or compromise is missing
 * (mem0 then falls back to its regular expressions).
 */
export function installNounCache(): void {
  let id: string;
  try {
    id = require.resolve('compromise', { paths: [path.dirname(require.resolve('mem0ai/oss'))] });
  } catch {
    return;
  }
  const loaded = require(id) as unknown;
  const entry = require.cache[id];
  if (!entry || typeof loaded !== 'function' || (loaded as { memoizedNouns?: boolean }).memoizedNouns) return;
  const memo = memoizeNouns(loaded as Nlp);
  Object.defineProperty(memo, 'memoizedNouns', { value: true });
  entry.exports = memo;
}
