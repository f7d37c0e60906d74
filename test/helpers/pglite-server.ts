/**
 * A throwaway PostgreSQL with pgvector for tests: PGlite (Postgres compiled to WebAssembly, in
 * memory) served over the real Postgres wire protocol by @electric-sql/pglite-socket, so `pg`
 * clients (mem0's pgvector store) connect to it like to any server. This machine's PostgreSQL
 * has no pgvector; this needs nothing but the dev dependencies.
 *
 * It runs in a child Node process: PGlite loads its WebAssembly with dynamic `import()`, which
 * Jest's CommonJS sandbox refuses (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING_FLAG), and a separate
 * process is what a real database is anyway. The child exits when asked, or when the parent goes
 * away (its stdin closes). It starts from the data directory the run's global setup made
 * (test/setup/pglite-template.cjs) rather than running initdb again.
 *
 * PGlite is a single-session database. pglite-socket multiplexes several client connections onto
 * it by queueing protocol messages (`maxConnections`, default 1 there, raised here): each mem0
 * store holds one connection, and an app instance has two stores (memories and
 * `memories_entities`), so two instances need four connections at once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { PGLITE_TEMPLATE } from './built';
import { TEST_DB_PASSWORD } from './secrets';

/** The child: plain CommonJS, run with `node -e` from the repository root (so `require` finds node_modules). */
const CHILD_SCRIPT = `
const { PGlite } = require('@electric-sql/pglite');
const { vector } = require('@electric-sql/pglite-pgvector');
const { PGLiteSocketServer } = require('@electric-sql/pglite-socket');
const fs = require('node:fs');
// The run's template data directory, once the global setup has made it (a fresh initdb without it).
async function template() {
  const base = process.env.PGLITE_TEMPLATE;
  for (let waited = 0; base && waited < 30000; waited += 50) {
    if (fs.existsSync(base + '.tar')) return { loadDataDir: new Blob([fs.readFileSync(base + '.tar')]) };
    if (fs.existsSync(base + '.error')) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {};
}
(async () => {
  const maxConnections = Number(process.env.PGLITE_MAX_CONNECTIONS || '16');
  const db = await PGlite.create({ extensions: { vector }, ...(await template()) });
  await db.exec('CREATE EXTENSION IF NOT EXISTS vector');
  let server = new PGLiteSocketServer({ db, host: '127.0.0.1', port: 0, maxConnections });
  await server.start();
  const port = Number(server.getServerConn().split(':').pop());
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await server.stop();
    await new Promise((resolve) => setImmediate(resolve));
    await db.close();
    process.exit(0);
  };
  process.on('message', (msg) => {
    if (msg && msg.type === 'stats') process.send({ type: 'stats', id: msg.id, stats: server.getStats() });
    if (msg && msg.type === 'stop') void stop();
    // The database "goes away" (every connection dropped, new ones refused) and comes back on the same port, data kept.
    if (msg && msg.type === 'pause') void server.stop().then(() => process.send({ type: 'paused', id: msg.id }));
    if (msg && msg.type === 'resume') {
      server = new PGLiteSocketServer({ db, host: '127.0.0.1', port, maxConnections });
      void server.start().then(() => process.send({ type: 'resumed', id: msg.id }));
    }
  });
  process.on('disconnect', () => void stop());
  process.stdin.on('end', () => void stop());
  process.stdin.resume();
  process.send({ type: 'ready', conn: server.getServerConn() });
})().catch((err) => {
  process.stderr.write(String((err && err.stack) || err) + '\\n');
  process.exit(1);
});
`;

export interface PgliteServer {
  /** `postgres://mem0:<TEST_DB_PASSWORD>@127.0.0.1:<port>/postgres` (PGlite ignores the password; the log scan looks for it). */
  url: string;
  /** Client connections open right now, as the socket server counts them. */
  activeConnections(): Promise<number>;
  /** Stops listening and drops every connection, keeping the data (the database is down). */
  pause(): Promise<void>;
  /** Listens again on the same port (the database is back, with its data). */
  resume(): Promise<void>;
  /** Stops the socket server (dropping every connection), closes the database and waits for the child to exit. Idempotent. */
  close(): Promise<void>;
}

export interface PgliteServerOptions {
  /** Concurrent client connections allowed (default 16). */
  maxConnections?: number;
  /** How long to wait for PGlite to start (default 60 s; about a second from the run's template, five or more with initdb). */
  startTimeoutMs?: number;
}

type ChildMessage =
  | { type: 'ready'; conn: string }
  | { type: 'stats'; id: number; stats: { activeConnections: number } }
  | { type: 'paused' | 'resumed'; id: number };

function isChildMessage(value: unknown): value is ChildMessage {
  return typeof value === 'object' && value !== null && typeof (value as { type?: unknown }).type === 'string';
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Starts PGlite with the `vector` extension created, listening on 127.0.0.1 and a free port. */
export async function startPgliteServer(options: PgliteServerOptions = {}): Promise<PgliteServer> {
  const child = spawn(process.execPath, ['-e', CHILD_SCRIPT], {
    cwd: path.resolve(__dirname, '../..'),
    env: { PATH: process.env.PATH ?? '', PGLITE_MAX_CONNECTIONS: String(options.maxConnections ?? 16), PGLITE_TEMPLATE },
    stdio: ['pipe', 'ignore', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });

  const conn = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`PGlite did not start within ${options.startTimeoutMs ?? 60_000} ms`));
    }, options.startTimeoutMs ?? 60_000);
    const onMessage = (msg: unknown): void => {
      if (!isChildMessage(msg) || msg.type !== 'ready') return;
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('message', onMessage);
      resolve(msg.conn);
    };
    const onExit = (code: number | null): void => {
      clearTimeout(timer);
      reject(new Error(`PGlite exited before it was ready (code ${String(code)}): ${stderr.trim()}`));
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });

  let nextId = 1;
  let closing: Promise<void> | undefined;
  const ask = (type: 'pause' | 'resume', answer: 'paused' | 'resumed'): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const id = nextId++;
      const onMessage = (msg: unknown): void => {
        if (!isChildMessage(msg) || msg.type !== answer || msg.id !== id) return;
        child.off('message', onMessage);
        resolve();
      };
      child.on('message', onMessage);
      if (!child.send({ type, id })) reject(new Error('PGlite child is gone'));
    });
  return {
    url: `postgres://mem0:${encodeURIComponent(TEST_DB_PASSWORD)}@${conn}/postgres`,
    activeConnections: () =>
      new Promise<number>((resolve, reject) => {
        const id = nextId++;
        const onMessage = (msg: unknown): void => {
          if (!isChildMessage(msg) || msg.type !== 'stats' || msg.id !== id) return;
          child.off('message', onMessage);
          resolve(msg.stats.activeConnections);
        };
        child.on('message', onMessage);
        if (!child.send({ type: 'stats', id })) reject(new Error('PGlite child is gone'));
      }),
    pause: () => ask('pause', 'paused'),
    resume: () => ask('resume', 'resumed'),
    close: () => {
      closing ??= (async () => {
        if (child.connected) child.send({ type: 'stop' });
        const done = exited(child);
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await done;
        clearTimeout(timer);
      })();
      return closing;
    },
  };
}
