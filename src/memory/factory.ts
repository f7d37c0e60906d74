/**
 * Builds the memory service the configuration asks for. A backend that cannot be built leaves
 * the proxy running with memory unavailable (503 on the memory endpoints, `degraded` health).
 */
import type { Config } from '../config';
import type { Logger } from '../logger';
import type { MemoryService } from './types';
import { UnavailableMemoryService } from './unavailable';

export async function createMemoryService(config: Config, logger: Logger): Promise<MemoryService> {
  const service = new UnavailableMemoryService(config.memory.backend, 'no memory backend is built yet');
  logger.warn('memory service unavailable', { backend: service.backend, reason: service.reason });
  return Promise.resolve(service);
}
