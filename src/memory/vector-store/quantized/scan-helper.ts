/**
 * The scan helper: a second thread that scores part of a large partition's blocks while the
 * store's own thread scores the rest, so that one search of a 100k-row scope uses both cores of a
 * machine that has them (a scan is bound by memory bandwidth per core: measured here, 100k × 1536
 * int8 codes take 14.7 ms on one thread and 8.1 ms on two).
 *
 * The helper instantiates the same kernel module on the arena's shared WebAssembly memory and
 * waits on a small shared control array; it never touches JavaScript objects of the store. A job
 * is a list of block numbers and a place for their dot products, both in the arena's memory:
 *
 *   STATE  0 idle · j > 0 job j open · −j the helper has joined job j
 *   NEXT   the next block index to claim (both threads claim CHUNK blocks at a time)
 *
 * The store's thread opens job j, claims and scores chunks until none is left, then closes the
 * job: if the helper never joined (asleep, still starting, busy elsewhere) the close succeeds at
 * once and the store's thread has scored every block itself; if it joined, the store's thread
 * waits for its last chunk (a few tens of microseconds of work). Nothing else moves the arena's
 * rows while a job runs: the store's thread is inside the job. A helper that fails marks BROKEN;
 * the job is then scored again on the store's thread and the helper is stopped for good.
 */
import { Worker } from 'node:worker_threads';
import type { WasmKernel } from './kernel';

const STATE = 0;
const NEXT = 1;
const COUNT = 2;
const LIST = 3;
const DOTS = 4;
const LAST_ROWS = 5;
const BROKEN = 6;
const STOP = 7;
const CONTROL_WORDS = 8;

/** Blocks per claim: ~0.5 MiB of codes at 1536 dims, so a wait for the helper's last chunk stays short. */
const CHUNK = 8;
/** A joined helper that has not finished its chunk by then is taken for dead. */
const JOIN_TIMEOUT_MS = 2000;

/** Where the arena keeps its rows: what both threads need to find a block. */
export interface BlockLayout {
  stride: number;
  blockRows: number;
  blockBytes: number;
  headerBytes: number;
}

/** The job's place in the arena's memory. */
export interface ScanJob {
  count: number;
  /** Byte offset of `count` int32 block numbers. */
  listOffset: number;
  /** Byte offset of the dot products: block j's rows start at `dotsOffset + 4 · j · blockRows`. */
  dotsOffset: number;
  /** Rows in the last block (the others are full). */
  lastRows: number;
}

// The helper thread's whole program (plain JavaScript: it is evaluated as is in the new thread).
const HELPER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { module, memory, control, layout, chunk } = workerData;
const [STATE, NEXT, COUNT, LIST, DOTS, LAST_ROWS, BROKEN, STOP] = [${[STATE, NEXT, COUNT, LIST, DOTS, LAST_ROWS, BROKEN, STOP].join(', ')}];
const ctl = new Int32Array(control);
const scores = new WebAssembly.Instance(module, { env: { mem: memory } }).exports.scores;
const { stride, blockRows, blockBytes, headerBytes } = layout;
let words = new Int32Array(memory.buffer);
while (Atomics.load(ctl, STOP) === 0) {
  const state = Atomics.load(ctl, STATE);
  if (state <= 0) {
    Atomics.wait(ctl, STATE, state, 1000);
    continue;
  }
  if (Atomics.compareExchange(ctl, STATE, state, -state) !== state) continue;
  try {
    if (words.buffer !== memory.buffer) words = new Int32Array(memory.buffer);
    const count = ctl[COUNT], list = ctl[LIST] >> 2, dots = ctl[DOTS], lastRows = ctl[LAST_ROWS];
    for (;;) {
      const start = Atomics.add(ctl, NEXT, chunk);
      if (start >= count) break;
      for (let j = start, end = Math.min(start + chunk, count); j < end; j++)
        scores(0, headerBytes + words[list + j] * blockBytes, j === count - 1 ? lastRows : blockRows, stride, dots + 4 * j * blockRows);
    }
    Atomics.store(ctl, STATE, 0);
  } catch {
    Atomics.store(ctl, BROKEN, 1);
  }
  Atomics.notify(ctl, STATE);
}
`;

export class ScanHelper {
  private readonly control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
  private readonly worker: Worker;
  private lastJob = 0;
  private stopped = false;
  /** Jobs scored, and how many of them the helper joined (the rest this thread scored alone). */
  readonly counts = { jobs: 0, joined: 0 };

  constructor(
    private readonly kernel: WasmKernel,
    private readonly layout: BlockLayout,
  ) {
    this.worker = new Worker(HELPER_SOURCE, {
      eval: true,
      workerData: { module: kernel.module, memory: kernel.mem, control: this.control.buffer, layout, chunk: CHUNK },
    });
    // It must not keep a process alive, and one that cannot start or dies is simply not used.
    this.worker.unref();
    this.worker.on('error', () => this.stop());
    this.worker.on('exit', () => {
      this.stopped = true;
    });
  }

  /** False once the helper has stopped (failed, exited, or `stop`): the arena scans alone then. */
  get usable(): boolean {
    return !this.stopped;
  }

  /** Scores every block of `job` into its dots, sharing the blocks with the helper if it joins. */
  score(job: ScanJob): void {
    const ctl = this.control;
    const words = new Int32Array(this.kernel.mem.buffer);
    const list = job.listOffset >> 2;
    const scoreBlock = (j: number): void => {
      const block = words[list + j] ?? 0;
      const rows = j === job.count - 1 ? job.lastRows : this.layout.blockRows;
      this.kernel.scores(
        0,
        this.layout.headerBytes + block * this.layout.blockBytes,
        rows,
        this.layout.stride,
        job.dotsOffset + 4 * j * this.layout.blockRows,
      );
    };
    ctl[COUNT] = job.count;
    ctl[LIST] = job.listOffset;
    ctl[DOTS] = job.dotsOffset;
    ctl[LAST_ROWS] = job.lastRows;
    Atomics.store(ctl, NEXT, 0);
    this.lastJob = (this.lastJob % 0x3fffffff) + 1;
    const id = this.lastJob;
    Atomics.store(ctl, STATE, id);
    Atomics.notify(ctl, STATE);
    for (;;) {
      const start = Atomics.add(ctl, NEXT, CHUNK);
      if (start >= job.count) break;
      for (let j = start, end = Math.min(start + CHUNK, job.count); j < end; j++) scoreBlock(j);
    }
    this.counts.jobs++;
    if (Atomics.compareExchange(ctl, STATE, id, 0) === id) return; // the helper did not join
    this.counts.joined++;
    const deadline = Date.now() + JOIN_TIMEOUT_MS;
    while (Atomics.load(ctl, STATE) === -id) {
      if (Atomics.load(ctl, BROKEN) === 1 || Date.now() > deadline) {
        // Its chunks may be missing: score them all here, and scan alone from now on.
        for (let j = 0; j < job.count; j++) scoreBlock(j);
        this.stop();
        Atomics.store(ctl, STATE, 0);
        return;
      }
      Atomics.wait(ctl, STATE, -id, 50);
    }
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    Atomics.store(this.control, STOP, 1);
    Atomics.notify(this.control, STATE);
    void this.worker.terminate();
  }
}
