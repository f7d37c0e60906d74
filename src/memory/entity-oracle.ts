/**
 * What mem0's `Memory.search` derives from a query (its entity texts and its lemmatized keyword
 * query), known before any search runs.
 *
 * mem0ai's search embeds the query, searches, and only then embeds the query's entities: two
 * embedding round trips, one after the other. The entities come from the query text alone
 * (mem0's local extractor), so they could go in the first request, but the extractor is not
 * exported. The oracle asks mem0 itself: a second `Memory` whose embedder records what it is
 * asked to embed and whose stores are empty runs the same `search` code on the query (no network,
 * no disk) and hands back the texts of its entity batch. Results therefore match mem0's own
 * extraction exactly, in whatever version is installed; if a future mem0 changes its search, the
 * prediction is merely missed (one extra round trip), never wrong.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Memory, VectorStore, VectorStoreResult } from 'mem0ai/oss';

type Oss = typeof import('mem0ai/oss');

/** What one oracle run saw of mem0's search. */
interface Observed {
  batches: string[][];
  lemmatized: string | undefined;
}

/** What mem0's search derives from a query before it touches a store. */
export interface QueryAnalysis {
  /** The query as mem0 lemmatizes it for keyword search. */
  lemmatized: string;
  /** The entity texts mem0 embeds for the entity boost (deduplicated, at most 8, in its order). */
  entities: string[];
}

/** A vector store that holds nothing: every search is empty, every write is dropped. */
class EmptyStore implements VectorStore {
  constructor(private readonly runs: AsyncLocalStorage<Observed>) {}
  async insert(): Promise<void> {}
  async search(): Promise<VectorStoreResult[]> {
    return [];
  }
  async keywordSearch(query: string): Promise<VectorStoreResult[] | null> {
    const run = this.runs.getStore();
    if (run) run.lemmatized = query;
    return null;
  }
  async get(): Promise<VectorStoreResult | null> {
    return null;
  }
  async update(): Promise<void> {}
  async delete(): Promise<void> {}
  async deleteCol(): Promise<void> {}
  async list(): Promise<[VectorStoreResult[], number]> {
    return [[], 0];
  }
  async getUserId(): Promise<string> {
    return 'entity-oracle';
  }
  async setUserId(): Promise<void> {}
  async initialize(): Promise<void> {}
}

/**
 * Records the texts of every batch it embeds (the entity batch of a search) into the batches of
 * the oracle call it runs for, and answers with zeros.
 */
class RecordingEmbedder {
  constructor(private readonly runs: AsyncLocalStorage<Observed>) {}
  async embed(): Promise<number[]> {
    return [0];
  }
  async embedBatch(texts: string[]): Promise<number[][]> {
    this.runs.getStore()?.batches.push([...texts]);
    return texts.map(() => [0]);
  }
}

/** The private fields of `Memory` the oracle replaces (present in mem0ai 3.x). */
interface MemoryFields {
  embedder: unknown;
  vectorStore: unknown;
  _entityStore: unknown;
  _initPromise: Promise<void>;
  telemetryId: string;
}

function fieldsOf(memory: Memory): MemoryFields | undefined {
  const value: object = memory;
  return 'embedder' in value && '_initPromise' in value ? (value as MemoryFields) : undefined;
}

export class EntityOracle {
  private constructor(
    private readonly memory: Memory,
    private readonly runs: AsyncLocalStorage<Observed>,
  ) {}

  /**
   * Builds the oracle on mem0ai's own `Memory` class, or undefined when this mem0ai's `Memory` does
   * not have the fields it replaces or fails the self-check (then searches simply make their second
   * round trip).
   */
  static async create(oss: Oss): Promise<EntityOracle | undefined> {
    try {
      const memory = new oss.Memory({
        version: 'v1.1',
        disableHistory: true,
        embedder: { provider: 'openai', config: { apiKey: 'entity-oracle', model: 'none', embeddingDims: 1 } },
        llm: { provider: 'openai', config: { apiKey: 'entity-oracle', model: 'none' } },
        vectorStore: { provider: 'memory', config: { collectionName: 'oracle', dimension: 1, dbPath: ':memory:' } },
      });
      const fields = fieldsOf(memory);
      if (!fields) return undefined;
      const runs = new AsyncLocalStorage<Observed>();
      const empty = new EmptyStore(runs);
      fields.embedder = new RecordingEmbedder(runs);
      fields.telemetryId = 'entity-oracle';
      await fields._initPromise;
      fields.vectorStore = empty;
      fields._entityStore = empty;
      const oracle = new EntityOracle(memory, runs);
      // Self-check: a query with a proper name must yield it, and a lemmatized text, or the oracle is of no use.
      const probe = await oracle.analyse('Where does Alice Smith live?');
      return probe?.entities.some((text) => text.includes('Alice')) && probe.lemmatized.length > 0 ? oracle : undefined;
    } catch {
      return undefined;
    }
  }

  /** The entity texts `Memory.search(query)` sends to `embedBatch`, in its order (empty when the query has none). */
  async searchEntities(query: string): Promise<string[]> {
    return (await this.observe(query)).batches[0] ?? [];
  }

  /**
   * Both things mem0's search derives from the query text, or undefined when mem0 did not reach
   * its keyword search (a mem0ai whose search works otherwise).
   */
  async analyse(query: string): Promise<QueryAnalysis | undefined> {
    const seen = await this.observe(query);
    if (seen.lemmatized === undefined) return undefined;
    return { lemmatized: seen.lemmatized, entities: seen.batches[0] ?? [] };
  }

  private async observe(query: string): Promise<Observed> {
    const seen: Observed = { batches: [], lemmatized: undefined };
    await this.runs.run(seen, () => this.memory.search(query, { filters: { user_id: 'entity-oracle' }, topK: 1 }));
    return seen;
  }
}
