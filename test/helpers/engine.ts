/**
 * The real mem0 engine for test apps: `createMemoryService` with the engine thread started from
 * this run's transpiled src/ (test/helpers/built.ts) rather than through tsx.
 */
import type { Config } from '../../src/config';
import type { Logger } from '../../src/logger';
import { createMemoryService, type MemoryServiceOptions } from '../../src/memory/factory';
import type { MemoryService } from '../../src/memory/types';
import { BUILT_ENGINE_THREAD } from './built';

export function startEngine(config: Config, logger: Logger, options: MemoryServiceOptions = {}): Promise<MemoryService> {
  return createMemoryService(config, logger, { threadScript: BUILT_ENGINE_THREAD, ...options });
}
