/**
 * The messages between the serving thread and the memory engine's worker thread, and how errors
 * cross between them (structured clone keeps no classes: our typed errors are sent as data and
 * rebuilt, so the HTTP layer still sees MemoryUnavailableError, MemoryRejectedError,
 * MemoryLimitError, NotFoundError, BadRequestError).
 */
import { AppError, BadRequestError, MemoryLimitError, MemoryRejectedError, MemoryUnavailableError, NotFoundError } from '../../errors';
import type { ConfigData } from '../../config';
import type { GuardTuning } from '../resilience';
import type { AddInput, ListOptions, MemoryScope, SearchOptions, UsersOptions } from '../types';

/** What the worker is started with. */
export interface EngineWorkerData {
  config: ConfigData;
  secrets: readonly string[];
  tuning?: Partial<GuardTuning> | undefined;
  batchEmbeddings?: boolean | undefined;
  startupTimeoutMs?: number | undefined;
}

/** One MemoryService call. */
export type EngineCall =
  | { op: 'search'; scope: MemoryScope; query: string; options: SearchOptions }
  | { op: 'list'; scope: MemoryScope; options: ListOptions }
  | { op: 'add'; scope: MemoryScope; input: AddInput }
  | { op: 'get'; scope: MemoryScope; id: string }
  | { op: 'update'; scope: MemoryScope; id: string; text: string }
  | { op: 'users'; options: UsersOptions }
  | { op: 'delete'; scope: MemoryScope; id: string }
  | { op: 'deleteAll'; scope: MemoryScope }
  | { op: 'available' };

export type ToWorker = { type: 'call'; id: number; call: EngineCall } | { type: 'close' };

/** An error as data. */
export type WireError =
  | { kind: 'unavailable'; transient: boolean }
  | { kind: 'rejected' }
  | { kind: 'limit'; limit: number }
  | { kind: 'not-found'; message: string; details: unknown }
  | { kind: 'bad-request'; message: string; details: unknown }
  | { kind: 'other'; name: string; message: string };

export type FromWorker =
  | { type: 'ready'; backend: string; unavailableReason?: string | undefined; available?: boolean | undefined }
  | { type: 'result'; id: number; ok: true; value: unknown }
  | { type: 'result'; id: number; ok: false; error: WireError }
  | { type: 'availability'; available: boolean }
  | { type: 'log'; level: string; message: string; meta: Record<string, unknown> }
  | { type: 'closed' };

export function toWire(err: unknown): WireError {
  if (err instanceof MemoryUnavailableError) return { kind: 'unavailable', transient: err.transient };
  if (err instanceof MemoryRejectedError) return { kind: 'rejected' };
  if (err instanceof MemoryLimitError) return { kind: 'limit', limit: err.limit };
  if (err instanceof NotFoundError) return { kind: 'not-found', message: err.message, details: err.details };
  if (err instanceof BadRequestError) return { kind: 'bad-request', message: err.message, details: err.details };
  // Any other error (AppError or not) is an engine failure the service did not classify.
  const e = err instanceof Error ? err : new Error(String(err));
  return { kind: 'other', name: err instanceof AppError ? 'AppError' : e.name, message: e.message };
}

export function fromWire(wire: WireError): Error {
  switch (wire.kind) {
    case 'unavailable':
      return new MemoryUnavailableError(wire.transient);
    case 'rejected':
      return new MemoryRejectedError();
    case 'limit':
      return new MemoryLimitError(wire.limit);
    case 'not-found':
      return new NotFoundError(wire.message, wire.details);
    case 'bad-request':
      return new BadRequestError(wire.message, wire.details);
    default: {
      const err = new Error(wire.message);
      err.name = wire.name;
      return err;
    }
  }
}

/** Log metadata as plain JSON data (errors become {name, message}); redaction happens on the serving thread. */
export function plainMeta(meta: Record<string, unknown>): Record<string, unknown> {
  try {
    return JSON.parse(
      JSON.stringify(meta, (_key, value: unknown) => (value instanceof Error ? { name: value.name, message: value.message } : value)),
    ) as Record<string, unknown>;
  } catch {
    return {};
  }
}
