/**
 * Registers EmbeddedVectorStore with mem0ai as the vector-store provider "embedded".
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

export const EMBEDDED_VECTOR_STORE_PROVIDER = 'embedded';

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
 * `config` ({ collectionName, dimension, dbPath, ... }). Idempotent.
 */
export function registerEmbeddedVectorStore(factory?: VectorStoreFactoryLike): void {
  const target = factory ?? mem0Factory();
  const original = target.create;
  if (isWrapped(original)) return;
  const wrapped: CreateFn = (provider, config) => {
    if (typeof provider === 'string' && provider.toLowerCase() === EMBEDDED_VECTOR_STORE_PROVIDER) {
      return new EmbeddedVectorStore(config);
    }
    return original.call(target, provider, config);
  };
  Object.defineProperty(wrapped, WRAPPED, { value: true });
  target.create = wrapped;
}
