/**
 * The memory engine's worker thread: builds the mem0 OSS service (embedded, pgvector or qdrant)
 * from the configuration it is given and answers MemoryService calls posted by the serving
 * thread. Everything mem0 does (extraction calls, embeddings, entity extraction, vector search,
 * SQLite commits with their fsyncs) runs here, so none of it delays an HTTP request of another
 * caller. Log lines are sent to the serving thread's logger, which redacts and writes them.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Transport from 'winston-transport';
import winston from 'winston';
import { configFromData } from '../../config';
import { createMem0Service } from '../mem0/build';
import { Mem0MemoryService } from '../mem0/service';
import type { MemoryService } from '../types';
import { UnavailableMemoryService } from '../unavailable';
import { plainMeta, toWire, type EngineCall, type EngineWorkerData, type FromWorker, type ToWorker } from './protocol';

const port = parentPort;
if (!port) throw new Error('engine-thread.ts runs as a worker thread only');
const data = workerData as EngineWorkerData;

function send(message: FromWorker): void {
  port?.postMessage(message);
}

/** Hands every log line to the serving thread. */
class ParentTransport extends Transport {
  override log(info: Record<string | symbol, unknown>, next: () => void): void {
    const { level, message, ...meta } = info;
    send({ type: 'log', level: String(level), message: String(message), meta: plainMeta(meta) });
    next();
  }
}

/**
 * mem0ai writes some failures straight to the console (with upstream error text). In this thread
 * they become log lines instead, so they pass the serving thread's redaction and level.
 */
function routeConsole(logger: winston.Logger): void {
  const line =
    (level: string) =>
    (...args: unknown[]) => {
      const text = args
        .map((a) => (a instanceof Error ? `${a.name}: ${a.message}` : typeof a === 'string' ? a : JSON.stringify(a)))
        .join(' ');
      logger.log(level, `memory engine: ${text.slice(0, 2000)}`);
    };
  Object.assign(console, { log: line('debug'), info: line('debug'), debug: line('debug'), warn: line('warn'), error: line('warn') });
}

async function run(service: MemoryService, call: EngineCall): Promise<unknown> {
  switch (call.op) {
    case 'search':
      return service.search(call.scope, call.query, call.options);
    case 'list':
      return service.list(call.scope, call.options);
    case 'add':
      return service.add(call.scope, call.input);
    case 'get':
      return service.get(call.scope, call.id);
    case 'update':
      return service.update(call.scope, call.id, call.text);
    case 'users':
      return service.users(call.options);
    case 'delete':
      return service.delete(call.scope, call.id);
    case 'deleteAll':
      return service.deleteAll(call.scope);
    case 'available':
      return service.available();
  }
}

async function main(): Promise<void> {
  const config = configFromData(data.config, data.secrets);
  const logger = winston.createLogger({ level: 'debug', transports: [new ParentTransport()] });
  routeConsole(logger);
  // createMem0Service loads mem0ai through mem0/load.ts, which sets MEM0_TELEMETRY first.
  const service = await createMem0Service(config, logger, {
    tuning: data.tuning,
    batchEmbeddings: data.batchEmbeddings,
    startupTimeoutMs: data.startupTimeoutMs,
    onAvailabilityChange: (available) => send({ type: 'availability', available }),
  });
  port?.on('message', (message: ToWorker) => {
    if (message.type === 'close') {
      void service.close().finally(() => send({ type: 'closed' }));
      return;
    }
    const { id, call } = message;
    run(service, call).then(
      (value) => send({ type: 'result', id, ok: true, value }),
      (err: unknown) => send({ type: 'result', id, ok: false, error: toWire(err) }),
    );
  });
  const unavailableReason = service instanceof UnavailableMemoryService ? service.reason : undefined;
  // The state the engine starts in (a remote store down at start: unavailable), observed without a
  // probe of its own, before any change is pushed.
  const available =
    service instanceof Mem0MemoryService ? service.knownAvailability() : unavailableReason === undefined ? undefined : false;
  send({ type: 'ready', backend: service.backend, unavailableReason, available });
}

void main().catch((err: unknown) => {
  send({
    type: 'ready',
    backend: data.config.memory.backend,
    unavailableReason: `the memory engine failed to start: ${err instanceof Error ? err.message : String(err)}`,
  });
});
