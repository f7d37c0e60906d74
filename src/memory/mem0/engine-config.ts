/** mem0's configuration from ours, and the checks that say why the engine cannot be built with it. */
import fs from 'node:fs';
import path from 'node:path';
import type { MemoryConfig } from 'mem0ai/oss';
import type { Config } from '../../config';
import type { Logger } from '../../logger';
import type { GuardTuning } from '../resilience';
import type { EmbeddedStoreFiles } from '../vector-store/embedded-store';

/** Optional packages mem0ai loads on demand, by LLM/embedder provider and by vector store. */
const PROVIDER_PACKAGES: Readonly<Record<string, string>> = {
  ollama: 'ollama',
  anthropic: '@anthropic-ai/sdk',
  groq: 'groq-sdk',
  mistral: '@mistralai/mistralai',
  google: '@google/genai',
  gemini: '@google/genai',
};
const STORE_PACKAGES: Readonly<Record<string, string>> = { pgvector: 'pg', qdrant: '@qdrant/js-client-rest' };

/** Whether `pkg` is installed where mem0ai would find it (without loading either). */
function packageInstalled(pkg: string): boolean {
  let from: string;
  try {
    from = path.dirname(require.resolve('mem0ai/oss'));
  } catch {
    return false;
  }
  const dirs = require.resolve.paths(pkg) ?? [];
  for (let dir = from; ; dir = path.dirname(dir)) {
    dirs.unshift(path.join(dir, 'node_modules'));
    if (path.dirname(dir) === dir) break;
  }
  return dirs.some((dir) => fs.existsSync(path.join(dir, pkg, 'package.json')));
}

/** Why the engine cannot be built with this configuration, or undefined when it can. */
export function mem0Preconditions(config: Config): string | undefined {
  const { backend, provider } = config.memory;
  const p = provider.toLowerCase();
  if (p === 'openai' && !config.openaiApiKey) {
    return 'OPENAI_API_KEY is not set: the memory engine (MEM0_PROVIDER=openai) needs it for extraction and embeddings';
  }
  const providerPackage = PROVIDER_PACKAGES[p];
  if (providerPackage && !packageInstalled(providerPackage)) {
    return `MEM0_PROVIDER=${provider} needs the '${providerPackage}' package (npm install ${providerPackage})`;
  }
  const storePackage = STORE_PACKAGES[backend];
  if (storePackage && !packageInstalled(storePackage)) {
    return `MEMORY_BACKEND=${backend} needs the '${storePackage}' package (npm install ${storePackage})`;
  }
  if (backend === 'pgvector' && !config.memory.databaseUrl) return 'DATABASE_URL is not set (MEMORY_BACKEND=pgvector)';
  if (backend === 'qdrant' && !config.memory.qdrantUrl) return 'QDRANT_URL is not set (MEMORY_BACKEND=qdrant)';
  return undefined;
}

/** Ollama's native API lives at the server root; an OpenAI-style `/v1` suffix would break it. */
function ollamaHost(url: string): string {
  return url.replace(/\/v1\/?$/, '');
}

function vectorStoreConfig(config: Config, logger: Logger, files: EmbeddedStoreFiles): MemoryConfig['vectorStore'] {
  const m = config.memory;
  const common = { collectionName: 'memories', dimension: m.embeddingDims };
  switch (m.backend) {
    case 'pgvector':
      // embeddingModelDims sizes the table mem0 creates; hnsw adds a cosine index at creation.
      // Our pooled subclass of mem0's store (register.ts): it reconnects after a database restart.
      return {
        provider: 'pgvector',
        config: {
          ...common,
          embeddingModelDims: m.embeddingDims,
          connectionString: m.databaseUrl,
          hnsw: true,
          poolSize: m.pgPoolSize,
          onConnectionError: (err: Error) => logger.warn('memory database connection lost; the pool replaces it', { error: err.message }),
        },
      };
    case 'qdrant':
      return {
        provider: 'qdrant',
        config: {
          ...common,
          embeddingModelDims: m.embeddingDims,
          url: m.qdrantUrl,
          onDisk: true,
          ...(m.qdrantApiKey ? { apiKey: m.qdrantApiKey } : {}),
        },
      };
    default:
      return {
        provider: 'embedded',
        config: { ...common, dbPath: path.join(config.dataDir, 'vectors.db'), preloadImages: true, logger, files },
      };
  }
}

/**
 * mem0's configuration from ours. One provider serves extraction (LLM) and embeddings. `files`:
 * the open files the embedded store's stores (memories and entities) join.
 */
export function buildMem0Config(
  config: Config,
  logger: Logger,
  tuning: Pick<GuardTuning, 'writeTimeoutMs'>,
  files: EmbeddedStoreFiles,
): MemoryConfig {
  const m = config.memory;
  const provider = m.provider.toLowerCase();
  const apiKey = config.openaiApiKey !== undefined ? { apiKey: config.openaiApiKey } : {};
  const llmBaseURL = provider === 'ollama' ? ollamaHost(m.llmBaseUrl) : m.llmBaseUrl;
  const embedderBaseURL = provider === 'ollama' ? ollamaHost(m.embedderBaseUrl) : m.embedderBaseUrl;
  return {
    version: 'v1.1',
    embedder: { provider, config: { ...apiKey, model: m.embeddingModel, baseURL: embedderBaseURL, embeddingDims: m.embeddingDims } },
    llm: { provider, config: { ...apiKey, model: m.model, baseURL: llmBaseURL, timeout: tuning.writeTimeoutMs } },
    vectorStore: vectorStoreConfig(config, logger, files),
    historyStore: { provider: 'sqlite', config: { historyDbPath: path.join(config.dataDir, 'history.db') } },
  };
}
