/**
 * An embedder wrapper that folds the two embedding requests of mem0's `add` into one.
 *
 * mem0ai's `Memory.add` embeds the extracted memory texts, stores them, then embeds their
 * entities: two requests one after the other (~120 ms each against OpenAI). The entities depend
 * only on the memory texts, so this wrapper asks the entity oracle for them and sends everything
 * with the memory texts; the entity `embedBatch` is then answered from what the first request
 * brought back. The vectors are the ones the engine would have fetched (same model, same texts),
 * so results do not change. (Searches get the same from recall.ts.)
 *
 * The wrapper only batches inside an add it was told about (`duringAdd`), tracked with
 * AsyncLocalStorage so concurrent adds never see each other's vectors; any other call goes
 * straight to the inner embedder. A missed prediction costs the second request it would have
 * cost anyway.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { EntityOracle } from './entity-oracle';

type MemoryAction = 'add' | 'update' | 'search';

/** Has texts' noun phrases parsed ahead, off this thread (NounPhrases). */
export interface NounPrefetch {
  prefetch(texts: readonly string[], options?: { urgent?: boolean }): Promise<void>;
}

/** mem0ai's embedder interface. */
export interface EmbedderLike {
  embed(text: string, memoryAction?: MemoryAction): Promise<number[]>;
  embedBatch(texts: string[], memoryAction?: MemoryAction): Promise<number[][]>;
}

/** Minimal logger shape (a winston logger fits). */
export interface BatchingLogger {
  warn(message: string, meta?: object): void;
}

interface Operation {
  /** Vectors fetched ahead of being asked for, by text. */
  prefetched: Map<string, number[]>;
  /** Whether the batch of extracted memory texts went out already. */
  memoryBatchSent: boolean;
}

/** mem0's entity key: two entity texts that normalise alike are one entity. */
function entityKey(text: string): string {
  return text.trim().toLowerCase();
}

export class BatchingEmbedder implements EmbedderLike {
  private readonly operations = new AsyncLocalStorage<Operation>();
  private warned = false;

  constructor(
    private readonly inner: EmbedderLike,
    private readonly oracle: EntityOracle,
    private readonly logger?: BatchingLogger,
    private readonly nouns?: NounPrefetch,
  ) {}

  /** Runs `fn` (one `Memory.add`) so its memory-text and entity embeddings go out as one request. */
  duringAdd<T>(fn: () => Promise<T>): Promise<T> {
    return this.operations.run({ prefetched: new Map(), memoryBatchSent: false }, fn);
  }

  async embed(text: string, memoryAction?: MemoryAction): Promise<number[]> {
    return this.operations.getStore()?.prefetched.get(text) ?? this.inner.embed(text, memoryAction);
  }

  async embedBatch(texts: string[], memoryAction?: MemoryAction): Promise<number[][]> {
    const op = this.operations.getStore();
    if (!op) return this.inner.embedBatch(texts, memoryAction);
    if (!op.memoryBatchSent) {
      // The first batch of an add is the extracted memory texts: their entities come along.
      op.memoryBatchSent = true;
      const entities = await this.predict(texts);
      await this.fetchInto(op, [...texts, ...entities], memoryAction);
    } else {
      await this.fetchInto(op, texts, memoryAction);
    }
    return texts.map((text) => {
      const vector = op.prefetched.get(text);
      if (!vector) throw new Error('embedding missing from the batch answer');
      return vector;
    });
  }

  /** Fetches, in one batch, the texts of `texts` the operation does not hold yet. */
  private async fetchInto(op: Operation, texts: readonly string[], memoryAction: MemoryAction | undefined): Promise<void> {
    const missing = [...new Set(texts)].filter((text) => !op.prefetched.has(text));
    if (missing.length === 0) return;
    const vectors = await this.inner.embedBatch(missing, memoryAction);
    if (vectors.length !== missing.length) throw new Error(`embedder returned ${vectors.length} vectors for ${missing.length} texts`);
    missing.forEach((text, i) => {
      const vector = vectors[i];
      if (vector) op.prefetched.set(text, vector);
    });
  }

  /**
   * The entity texts mem0 will ask for next, for these source texts: deduplicated by mem0's
   * entity key, first spelling kept, texts already in `sources` left out. Empty when the oracle
   * fails (logged once): the engine then fetches them itself.
   */
  private async predict(sources: readonly string[]): Promise<string[]> {
    const seen = new Set(sources);
    const keys = new Set<string>();
    const out: string[] = [];
    try {
      // Parsed on the second thread while this one serves others; the oracle and mem0's own
      // extraction then find them kept.
      await this.nouns?.prefetch(sources);
      for (const source of sources) {
        for (const entity of await this.oracle.searchEntities(source)) {
          const key = entityKey(entity);
          if (!key || keys.has(key)) continue;
          keys.add(key);
          if (!seen.has(entity)) out.push(entity);
        }
      }
    } catch (err) {
      if (!this.warned) {
        this.warned = true;
        this.logger?.warn('entity prediction failed; embeddings fall back to two requests', { err });
      }
      return [];
    }
    return out;
  }
}
