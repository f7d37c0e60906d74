/**
 * Registers our vector stores with mem0ai: EmbeddedVectorStore as the provider "embedded", and the
 * pooled pgvector store (pooled-pgvector.ts) in place of mem0's own "pgvector".
 *
 * mem0ai has no plugin API for vector stores: `Memory` builds its stores (the main collection and
 * `<collectionName>_entities`) through the static `VectorStoreFactory.create(provider, config)`,
 * looked up at call time. So we wrap that static method once: "embedded" returns our store and
 * every other provider goes to the original method unchanged.
 *
 * mem0ai is loaded lazily inside the function (not at import time) because it reads
 * MEM0_TELEMETRY when first loaded; callers set that variable before calling this.
 */
import type { VectorStore, VectorStoreConfig } from 'mem0ai/oss';
import { EmbeddedVectorStore } from './embedded-store';
import { pooledPgVectorClass, type PgVectorClass, type PooledPgVectorConfig } from './pooled-pgvector';

export const EMBEDDED_VECTOR_STORE_PROVIDER = 'embedded';
export const PGVECTOR_PROVIDER = 'pgvector';

/** The part of mem0ai's VectorStoreFactory we wrap (a parameter so tests can pass their own). */
export interface VectorStoreFactoryLike {
  create(provider: string, config: VectorStoreConfig): VectorStore;
}

type CreateFn = VectorStoreFactoryLike['create'];

// Symbol.for: the mark survives a second copy of this module (e.g. jest module isolation) that
// still sees the same mem0ai module.
const WRAPPED = Symbol.for('mem0-proxy.embedded-vector-store.wrapped');

function isWrapped(fn: CreateFn): boolean {
  return (fn as CreateFn & { [WRAPPED]?: boolean })[WRAPPED] === true;
}

function mem0Factory(): VectorStoreFactoryLike {
  const oss = require('mem0ai/oss') as typeof import('mem0ai/oss');
  return oss.VectorStoreFactory;
}

/**
 * Makes `VectorStoreFactory.create('embedded', config)` return an EmbeddedVectorStore built from
 * `config` ({ collectionName, dimension, dbPath, ... }), and `create('pgvector', config)` the
 * pooled subclass of mem0's PGVector (`pgVectorBase`, default mem0ai's own class). Idempotent.
 */
export function registerEmbeddedVectorStore(factory?: VectorStoreFactoryLike, pgVectorBase?: PgVectorClass): void {
  const target = factory ?? mem0Factory();
  const original = target.create;
  if (isWrapped(original)) return;
  let Pooled: PgVectorClass | undefined;
  const wrapped: CreateFn = (provider, config) => {
    const name = typeof provider === 'string' ? provider.toLowerCase() : '';
    if (name === EMBEDDED_VECTOR_STORE_PROVIDER) return new EmbeddedVectorStore(config);
    if (name === PGVECTOR_PROVIDER) {
      Pooled ??= pooledPgVectorClass(pgVectorBase ?? (require('mem0ai/oss') as { PGVector: PgVectorClass }).PGVector);
      return new Pooled(config as PooledPgVectorConfig);
    }
    return original.call(target, provider, config);
  };
  Object.defineProperty(wrapped, WRAPPED, { value: true });
  target.create = wrapped;
}
