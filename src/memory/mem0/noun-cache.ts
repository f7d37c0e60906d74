/**
 * A memo in front of compromise, the part-of-speech tagger mem0ai runs to find an entity's noun
 * phrases (`nlp(text).nouns().out('array')`, its only use of the library). Each save tags every
 * extracted memory text twice: once when the entity oracle predicts the entity batch (so the
 * embeddings go out in one request), once when mem0 extracts the entities for real. Tagging is
 * the costliest step of a save after the network (≈ 2 ms a sentence here), and the same text
 * always gives the same nouns, so the second call is answered from a bounded cache.
 *
 * It has to sit in Node's module cache before mem0ai is loaded (mem0ai takes `require('compromise')`
 * once, at load). What `nlp(text)` returns is the real document, built on first use of anything but
 * `nouns().out('array')`, so any other use mem0 might make of it still works.
 */
import path from 'node:path';

/** Texts remembered (the oldest forgotten first): a save's texts are asked for again within milliseconds. */
const MAX_ENTRIES = 2000;
/** Longer texts (whole prompts) are tagged each time: the cache stays within a few megabytes. */
const MAX_TEXT_CHARS = 1000;

type Nlp = ((text: string, ...rest: unknown[]) => unknown) & Record<string, unknown>;

interface Doc {
  nouns(): { out(format: string): unknown };
}

function isDoc(value: unknown): value is Doc {
  return typeof value === 'object' && value !== null && typeof (value as { nouns?: unknown }).nouns === 'function';
}

/** Wraps `nlp` so `nlp(text).nouns().out('array')` is computed once per text (up to MAX_ENTRIES texts). */
export function memoizeNouns(nlp: Nlp, maxEntries = MAX_ENTRIES): Nlp {
  const nouns = new Map<string, string[]>();
  const cached = (text: string, ...rest: unknown[]): unknown => {
    if (rest.length > 0 || typeof text !== 'string' || text.length > MAX_TEXT_CHARS) return nlp(text, ...rest);
    let real: unknown;
    const doc = (): unknown => (real ??= nlp(text));
    const nounsOf = (): string[] => {
      let found = nouns.get(text);
      if (found === undefined) {
        const d = doc();
        const out = isDoc(d) ? d.nouns().out('array') : undefined;
        if (!Array.isArray(out) || !out.every((n) => typeof n === 'string')) throw new Error('compromise: nouns().out("array") is not a list of strings');
        found = out;
        if (nouns.size >= maxEntries) nouns.delete(nouns.keys().next().value as string);
        nouns.set(text, found);
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
