/**
 * The memory service when no engine could be built (no key, bad backend configuration): every
 * call fails with "Memory service is unavailable" and /health reports it, while `/v1/*` keeps
 * passing through.
 */
import { MemoryUnavailableError } from '../errors';
import type { MemoryService } from './types';

export class UnavailableMemoryService implements MemoryService {
  readonly backend: string;

  constructor(
    backend: string,
    /** Why it is unavailable, for the start-up log (never sent to callers). */
    readonly reason: string,
  ) {
    this.backend = backend;
  }

  search(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  list(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  add(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  get(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  update(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  users(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  delete(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  deleteAll(): Promise<never> {
    return Promise.reject(new MemoryUnavailableError(false));
  }
  available(): Promise<boolean> {
    return Promise.resolve(false);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
