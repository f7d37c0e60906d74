/**
 * Vector-store benchmark: EmbeddedVectorStore vs mem0ai's built-in `memory` store
 * (MemoryVectorStore), side by side in one run, at the store level (no embedding calls: random
 * unit vectors as queries), the way mem0's Memory.search calls it (filters { user_id }, topK 80 =
 * max(4 x default topK 20, 60)).
 *
 * Data: one searched user with 1k rows and one with 10k rows among `totalRows` rows in all (the
 * rest spread over users of 100 rows), inserted in shuffled order as memories accumulate over time.
 * The built-in store reads every row of the file on each search (its cost grows with the total,
 * ~0.1 s per 1000 rows at 1536 dims), so it gets only a few timed searches; its total is printed
 * in the table (MEM0_BENCH_BUILTIN_TOTAL runs it smaller, with an extrapolation note).
 *
 * Run: npx tsx bench/memory-store.ts   (env MEM0_BENCH_TOTAL / MEM0_BENCH_BUILTIN_TOTAL override sizes)
 */
process.env.MEM0_TELEMETRY = 'false'; // before mem0ai is loaded (it is required lazily below)

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { VectorStore } from 'mem0ai/oss';
import { EmbeddedStoreFiles, EmbeddedVectorStore, embeddedVectorStoreKernel } from '../src/memory/vector-store/embedded-store';
import { seededRandom } from '../test/helpers/random';

export interface MemoryStoreBenchOptions {
  dimension?: number;
  /** Rows in the embedded store's file. */
  totalRows?: number;
  /** Rows in the built-in store's file (it rescans all of them per search). */
  builtinTotalRows?: number;
  /** Rows of the searched users. */
  userSizes?: number[];
  /** Timed searches per user for the embedded store / for the built-in store. */
  searches?: number;
  builtinSearches?: number;
  topK?: number;
  /** Rows per insert() call while loading. */
  batchSize?: number;
  /** Timed single-row insert() calls (one transaction each, as mem0's add() does per batch). */
  singleInserts?: number;
  /** Also time the embedded store's plain-JS kernel. */
  compareJsKernel?: boolean;
}

interface SearchRow {
  store: string;
  totalRows: number;
  userRows: number;
  firstMs: number;
  p50: number;
  p99: number;
  n: number;
}

interface InsertRow {
  store: string;
  totalRows: number;
  bulkRowsPerSec: number;
  singleOpsPerSec: number;
  singleP50: number;
  fileMB: number;
}

function unitVector(dim: number, next: () => number): number[] {
  const v = Array.from({ length: dim }, () => next() * 2 - 1);
  let sum = 0;
  for (const x of v) sum += x * x;
  const inv = 1 / Math.sqrt(sum);
  return v.map((x) => x * inv);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Owner of each row, shuffled: searched users first in the list, then users of 100 rows. */
function owners(total: number, userSizes: number[], seed: number): string[] {
  const out: string[] = [];
  for (const size of userSizes) for (let i = 0; i < size; i++) out.push(`user-${size}`);
  for (let i = 0; out.length < total; i++) out.push(`other-${Math.floor(i / 100)}`);
  out.length = Math.min(out.length, total);
  const next = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const a = out[i];
    const b = out[j];
    if (a === undefined || b === undefined) throw new RangeError(`owners: shuffle index ${i} or ${j} outside ${out.length}`);
    out[i] = b;
    out[j] = a;
  }
  return out;
}

function payloadFor(userId: string, i: number): Record<string, unknown> {
  const now = new Date(1_700_000_000_000 + i * 1000).toISOString();
  return {
    user_id: userId,
    data: `User mentioned fact number ${i} about their preferences and plans`,
    textLemmatized: `user mention fact number ${i} preference plan`,
    hash: `h${i}`,
    createdAt: now,
    updatedAt: now,
  };
}

async function load(store: VectorStore, rowOwners: string[], dim: number, batchSize: number, seed: number): Promise<number> {
  const next = seededRandom(seed);
  const started = nowMs();
  for (let b = 0; b < rowOwners.length; b += batchSize) {
    const n = Math.min(batchSize, rowOwners.length - b);
    const vectors = Array.from({ length: n }, () => unitVector(dim, next));
    const ids = Array.from({ length: n }, (_, i) => `mem-${b + i}`);
    const payloads = rowOwners.slice(b, b + n).map((owner, i) => payloadFor(owner, b + i));
    await store.insert(vectors, ids, payloads);
  }
  return nowMs() - started;
}

async function timeSingleInserts(store: VectorStore, count: number, dim: number): Promise<number[]> {
  const next = seededRandom(99);
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const v = unitVector(dim, next);
    const t = nowMs();
    await store.insert([v], [`single-${i}`], [payloadFor('single-user', i)]);
    times.push(nowMs() - t);
  }
  return times;
}

async function timeSearches(
  label: string,
  store: VectorStore,
  totalRows: number,
  userSizes: number[],
  searches: number,
  dim: number,
  topK: number,
): Promise<SearchRow[]> {
  const rows: SearchRow[] = [];
  const next = seededRandom(1234);
  for (const size of userSizes) {
    const filters = { user_id: `user-${size}` };
    const t0 = nowMs();
    const first = await store.search(unitVector(dim, next), topK, filters); // loads the user's partition (embedded)
    const firstMs = nowMs() - t0;
    if (first.length !== Math.min(topK, size)) throw new Error(`${label}: expected ${Math.min(topK, size)} results, got ${first.length}`);
    const times: number[] = [];
    for (let i = 0; i < searches; i++) {
      const q = unitVector(dim, next);
      const t = nowMs();
      await store.search(q, topK, filters);
      times.push(nowMs() - t);
    }
    times.sort((a, b) => a - b);
    rows.push({
      store: label,
      totalRows,
      userRows: size,
      firstMs,
      p50: percentile(times, 50),
      p99: percentile(times, 99),
      n: times.length,
    });
  }
  return rows;
}

function fileMB(dir: string): number {
  let bytes = 0;
  for (const f of fs.readdirSync(dir)) bytes += fs.statSync(path.join(dir, f)).size;
  return bytes / 1e6;
}

function fmt(n: number, digits = 1): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '-';
}

function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padStart(widths[i] ?? 0)).join(' | ')} |`;
  return [line(headers), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

function envInt(name: string): number | undefined {
  const raw = process.env[name];
  return raw ? Number.parseInt(raw, 10) : undefined;
}

export async function runMemoryStoreBench(opts: MemoryStoreBenchOptions = {}): Promise<void> {
  const dim = opts.dimension ?? 1536;
  const userSizes = opts.userSizes ?? [1_000, 10_000];
  const minTotal = userSizes.reduce((a, b) => a + b, 0);
  const totalRows = Math.max(minTotal, opts.totalRows ?? envInt('MEM0_BENCH_TOTAL') ?? 100_000);
  // The built-in store holds 100k x 1536 (~0.8 GB file) and searches it in ~11 s on a 2-core box,
  // so it runs at full size by default, with few searches.
  const builtinTotal = Math.max(minTotal, opts.builtinTotalRows ?? envInt('MEM0_BENCH_BUILTIN_TOTAL') ?? totalRows);
  const searches = opts.searches ?? 200;
  const builtinSearches = opts.builtinSearches ?? 3;
  const topK = opts.topK ?? 80;
  const batchSize = opts.batchSize ?? 1_000;
  const singleInserts = opts.singleInserts ?? 200;
  const compareJs = opts.compareJsKernel ?? true;

  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mem0-store-bench-'));
  const searchRows: SearchRow[] = [];
  const insertRows: InsertRow[] = [];
  const notes: string[] = [];
  const benchStart = nowMs();
  console.log(
    `memory-store bench: dim=${dim}, topK=${topK}, users of ${userSizes.join(' / ')} rows; cpus=${os.cpus().length}, node ${process.version}`,
  );
  const files = new EmbeddedStoreFiles();
  try {
    // --- EmbeddedVectorStore ------------------------------------------------------------------
    const embeddedDir = path.join(root, 'embedded');
    const embedded = new EmbeddedVectorStore({
      dbPath: path.join(embeddedDir, 'vectors.db'),
      collectionName: 'memories',
      dimension: dim,
      files,
    });
    const kernelLabel = `embedded (${embedded.kernel})`;
    console.log(`loading ${totalRows} rows into ${kernelLabel} ...`);
    const loadMs = await load(embedded, owners(totalRows, userSizes, 1), dim, batchSize, 2);
    const singles = (await timeSingleInserts(embedded, singleInserts, dim)).sort((a, b) => a - b);
    insertRows.push({
      store: kernelLabel,
      totalRows,
      bulkRowsPerSec: totalRows / (loadMs / 1000),
      singleOpsPerSec: singles.length / (singles.reduce((a, b) => a + b, 0) / 1000),
      singleP50: percentile(singles, 50),
      fileMB: fileMB(embeddedDir),
    });
    searchRows.push(...(await timeSearches(kernelLabel, embedded, totalRows + singleInserts, userSizes, searches, dim, topK)));
    const stats = embedded.cacheStats();
    notes.push(
      `RSS after loading the embedded store's searched users (${stats.rows} rows in memory, ~${fmt(stats.bytes / 1e6)} MB index): ` +
        `${fmt(process.memoryUsage().rss / 1e6, 0)} MB`,
    );
    embedded.close();
    files.closeAll();
    if (compareJs && kernelLabel === 'embedded (wasm)') {
      // A fresh connection, so the plain-JS kernel loads its own copy of the users instead of
      // reusing the partitions the WASM instance had loaded from the same file.
      const jsStore = new EmbeddedVectorStore({
        dbPath: path.join(embeddedDir, 'vectors.db'),
        collectionName: 'memories',
        dimension: dim,
        kernel: 'js',
        files,
      });
      searchRows.push(
        ...(await timeSearches('embedded (js)', jsStore, totalRows + singleInserts, userSizes, Math.min(searches, 50), dim, topK)),
      );
      jsStore.close();
    }
    fs.rmSync(embeddedDir, { recursive: true, force: true });

    // --- mem0ai built-in MemoryVectorStore ----------------------------------------------------
    const { MemoryVectorStore } = require('mem0ai/oss') as typeof import('mem0ai/oss');
    const builtinDir = path.join(root, 'builtin');
    fs.mkdirSync(builtinDir, { recursive: true });
    const builtin = new MemoryVectorStore({ dbPath: path.join(builtinDir, 'vector_store.db'), dimension: dim });
    console.log(`loading ${builtinTotal} rows into mem0 built-in ...`);
    const builtinLoadMs = await load(builtin, owners(builtinTotal, userSizes, 1), dim, batchSize, 2);
    const builtinSingles = (await timeSingleInserts(builtin, singleInserts, dim)).sort((a, b) => a - b);
    insertRows.push({
      store: 'mem0 built-in',
      totalRows: builtinTotal,
      bulkRowsPerSec: builtinTotal / (builtinLoadMs / 1000),
      singleOpsPerSec: builtinSingles.length / (builtinSingles.reduce((a, b) => a + b, 0) / 1000),
      singleP50: percentile(builtinSingles, 50),
      fileMB: fileMB(builtinDir),
    });
    // Its search reads the whole table, so the total (incl. the single inserts) is what counts.
    searchRows.push(...(await timeSearches('mem0 built-in', builtin, builtinTotal + singleInserts, userSizes, builtinSearches, dim, topK)));
    notes.push(`RSS after the built-in store's searches: ${fmt(process.memoryUsage().rss / 1e6, 0)} MB`);
    const perRowMs =
      searchRows.filter((r) => r.store === 'mem0 built-in').reduce((a, r) => a + r.p50, 0) /
      userSizes.length /
      (builtinTotal + singleInserts);
    if (builtinTotal < totalRows) {
      notes.push(
        `built-in store run at ${builtinTotal} total rows, not ${totalRows}: it rescans every row per search ` +
          `(~${fmt(perRowMs * 1000, 1)} ms per 1000 rows here, so ~${fmt((perRowMs * totalRows) / 1000, 0)} s per search at ${totalRows} rows, ` +
          `and it materializes all rows at once: ~${fmt((totalRows * dim * 4 * 3) / 1e9, 1)} GB+ per search).`,
      );
    }
  } finally {
    files.closeAll();
    fs.rmSync(root, { recursive: true, force: true });
  }

  console.log('\nSearch latency (store.search, filters {user_id}, random unit query; "first" includes loading the user into memory):');
  console.log(
    table(
      ['store', 'total rows', 'user rows', 'dim', 'first ms', 'p50 ms', 'p99 ms', 'searches'],
      searchRows.map((r) => [
        r.store,
        String(r.totalRows),
        String(r.userRows),
        String(dim),
        fmt(r.firstMs),
        fmt(r.p50, 2),
        fmt(r.p99, 2),
        String(r.n),
      ]),
    ),
  );
  console.log(`\nInserts (bulk: insert() of ${batchSize} rows per call; single: one-row insert() calls, each its own commit):`);
  console.log(
    table(
      ['store', 'total rows', 'bulk rows/s', 'single inserts/s', 'single p50 ms', 'files MB'],
      insertRows.map((r) => [
        r.store,
        String(r.totalRows),
        fmt(r.bulkRowsPerSec, 0),
        fmt(r.singleOpsPerSec, 0),
        fmt(r.singleP50, 2),
        fmt(r.fileMB, 0),
      ]),
    ),
  );
  notes.push('p99 is the nearest-rank percentile of the timed searches: with only a few built-in searches it is their maximum.');
  for (const n of notes) console.log(`- ${n}`);
  const bar = searchRows.find((r) => r.store.startsWith('embedded (') && r.store !== 'embedded (js)' && r.userRows === 10_000);
  if (bar)
    console.log(`- bar: embedded search p50 at 10k x ${dim} = ${fmt(bar.p50, 2)} ms (target < 20 ms): ${bar.p50 < 20 ? 'MET' : 'NOT MET'}`);
  console.log(`- kernel "auto" resolves to: ${embeddedVectorStoreKernel()}; bench wall time ${fmt((nowMs() - benchStart) / 1000, 0)} s`);
}

if (require.main === module) {
  runMemoryStoreBench().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
