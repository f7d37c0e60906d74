/** The arena: fixed-size blocks of quantized rows in one growable buffer (a WASM memory, or an ArrayBuffer for the JS kernel). */
import { availableParallelism } from 'node:os';
import { instantiateKernel, jsScores, kernelModuleOrNull, type SearchKernel, WASM_PAGE, type WasmKernel } from './kernel';
import { paddedLength } from './quantize';
import { ScanHelper } from './scan-helper';

const TARGET_BLOCK_BYTES = 65536;

export class ArenaFullError extends Error {}

/**
 * One arena per (padded dimension, kernel) per Int8Arenas, shared by its stores: a partition owns a
 * list of blocks, so growing, shrinking and evicting partitions never moves other partitions'
 * vectors, and a block holds enough rows (~64 KiB) that the per-call overhead of the kernel is
 * negligible. Memory is reused through a free list; a WASM memory never shrinks.
 * Layout: [query row][scores of one block][blocks ...]; a run of blocks holds the scan helper's
 * job (block numbers and dot products) once a partition is large enough to share its scan.
 */
export class Int8Arena {
  readonly stride: number; // codes (bytes) per row
  readonly blockRows: number;
  readonly blockBytes: number;
  private readonly headerBytes: number;
  private readonly scoresOffset: number;
  private readonly wasm: WasmKernel | null;
  private bytes: Int8Array;
  private scoresView: Int32Array;
  private capacityBlocks = 0;
  private nextBlock = 0;
  private readonly freeBlocks: number[] = [];
  /** Partitions of at least this many blocks share their scan with a helper thread (Infinity: never). */
  private readonly helperMinBlocks: number;
  private helper: ScanHelper | null = null;
  private helperStarting = false;
  private closed = false;
  /** The contiguous blocks the helper's job lives in. */
  private jobBlocks: { first: number; count: number } | null = null;

  /** `helperMinRows`: the smallest partition whose scan is shared with a second thread (WASM kernel only). */
  constructor(stride: number, wasm: WasmKernel | null, helperMinRows = Infinity) {
    this.stride = stride;
    this.blockRows = Math.max(1, Math.floor(TARGET_BLOCK_BYTES / stride));
    this.blockBytes = this.blockRows * stride;
    this.scoresOffset = stride;
    this.headerBytes = stride + Math.ceil((this.blockRows * 4) / 16) * 16;
    this.wasm = wasm;
    if (wasm) {
      const needPages = Math.ceil(this.headerBytes / WASM_PAGE) - wasm.mem.buffer.byteLength / WASM_PAGE;
      if (needPages > 0) wasm.mem.grow(needPages);
      this.bytes = new Int8Array(wasm.mem.buffer);
    } else {
      this.bytes = new Int8Array(this.headerBytes); // the JS kernel's own buffer, which `bytes` spans whole (grow copies it)
    }
    this.scoresView = new Int32Array(this.bytes.buffer, this.scoresOffset, this.blockRows);
    this.helperMinBlocks = wasm ? Math.ceil(helperMinRows / this.blockRows) : Infinity;
  }

  get kernel(): 'wasm' | 'js' {
    return this.wasm ? 'wasm' : 'js';
  }

  allocBlock(): number {
    const reused = this.freeBlocks.pop();
    if (reused !== undefined) return reused;
    if (this.nextBlock >= this.capacityBlocks) this.grow(Math.max(16, Math.ceil(this.capacityBlocks * 0.5)));
    return this.nextBlock++;
  }

  freeBlock(block: number): void {
    this.freeBlocks.push(block);
  }

  writeRow(block: number, slot: number, codes: Int8Array): void {
    this.view().set(codes, this.rowOffset(block, slot));
  }

  /** The codes of a block's first `rows` rows, as a view (valid until the arena grows). */
  rowsOf(block: number, rows: number): Int8Array {
    const offset = this.rowOffset(block, 0);
    return this.view().subarray(offset, offset + rows * this.stride);
  }

  /** Writes whole rows (`codes.length` a multiple of the stride) into a block from `slot` on. */
  writeRows(block: number, slot: number, codes: Int8Array): void {
    this.view().set(codes, this.rowOffset(block, slot));
  }

  copyRow(fromBlock: number, fromSlot: number, toBlock: number, toSlot: number): void {
    const from = this.rowOffset(fromBlock, fromSlot);
    this.view().copyWithin(this.rowOffset(toBlock, toSlot), from, from + this.stride);
  }

  setQuery(codes: Int8Array): void {
    this.view().set(codes, 0);
  }

  /** Integer dot products of the first `rows` rows of a block with the query; overwritten by the next call. */
  scoreBlock(block: number, rows: number): Int32Array {
    const vOffset = this.headerBytes + block * this.blockBytes;
    if (this.wasm) this.wasm.scores(0, vOffset, rows, this.stride, this.scoresOffset);
    else jsScores(this.bytes, 0, vOffset, rows, this.stride, this.scoresView);
    this.view();
    return this.scoresView;
  }

  /**
   * The integer dot products of all rows of `blocks` with the query (every block full but the
   * last, which holds `lastRows`), block j's rows from index j·blockRows on, scored by this thread
   * and the scan helper together. Null when there are too few blocks to be worth a second thread,
   * or no helper can run: then score block by block. Valid until the next call.
   */
  scoreBlocks(blocks: readonly number[], lastRows: number): Int32Array | null {
    if (!this.wasm || blocks.length < this.helperMinBlocks) return null;
    if (!this.helper) {
      // Started after this scan, which runs alone: starting a thread takes the one that asks
      // a few milliseconds, better spent after the search than inside it.
      if (!this.helperStarting) {
        this.helperStarting = true;
        const wasm = this.wasm;
        setImmediate(() => {
          if (this.closed) return;
          this.helper = new ScanHelper(wasm, {
            stride: this.stride,
            blockRows: this.blockRows,
            blockBytes: this.blockBytes,
            headerBytes: this.headerBytes,
          });
        }).unref();
      }
      return null;
    }
    if (!this.helper.usable) return null;
    const listBytes = Math.ceil((blocks.length * 4) / 16) * 16;
    let offset: number;
    try {
      offset = this.jobOffset(listBytes + blocks.length * this.blockRows * 4);
    } catch (err) {
      if (err instanceof ArenaFullError) return null; // no room for the job: one thread scans
      throw err;
    }
    const buffer = this.view().buffer;
    new Int32Array(buffer, offset, blocks.length).set(blocks);
    this.helper.score({ count: blocks.length, listOffset: offset, dotsOffset: offset + listBytes, lastRows });
    return new Int32Array(buffer, offset + listBytes, blocks.length * this.blockRows);
  }

  /** Scans shared with the helper so far, and how many of them it joined. */
  scanCounts(): { jobs: number; joined: number } {
    return { jobs: this.helper?.counts.jobs ?? 0, joined: this.helper?.counts.joined ?? 0 };
  }

  /** Stops the scan helper, if one runs, and starts none (the arena scans alone afterwards). */
  close(): void {
    this.closed = true;
    this.helper?.stop();
  }

  /** The byte offset of a job area of at least `bytes` (contiguous blocks past all others, grown as needed). */
  private jobOffset(bytes: number): number {
    const need = Math.ceil(bytes / this.blockBytes);
    if (!this.jobBlocks || this.jobBlocks.count < need) {
      const count = Math.ceil(need * 1.25); // room for the partition to grow before the area moves
      if (this.nextBlock + count > this.capacityBlocks) this.grow(this.nextBlock + count - this.capacityBlocks);
      if (this.jobBlocks) for (let b = 0; b < this.jobBlocks.count; b++) this.freeBlocks.push(this.jobBlocks.first + b);
      this.jobBlocks = { first: this.nextBlock, count };
      this.nextBlock += count;
    }
    return this.headerBytes + this.jobBlocks.first * this.blockBytes;
  }

  private rowOffset(block: number, slot: number): number {
    return this.headerBytes + block * this.blockBytes + slot * this.stride;
  }

  /** The current byte view (a grown WASM memory detaches the old ArrayBuffer). */
  private view(): Int8Array {
    if (this.wasm && this.bytes.buffer !== this.wasm.mem.buffer) {
      this.bytes = new Int8Array(this.wasm.mem.buffer);
      this.scoresView = new Int32Array(this.bytes.buffer, this.scoresOffset, this.blockRows);
    }
    return this.bytes;
  }

  private grow(extraBlocks: number): void {
    const newCapacity = this.capacityBlocks + extraBlocks;
    const needBytes = this.headerBytes + newCapacity * this.blockBytes;
    try {
      if (this.wasm) {
        const havePages = this.wasm.mem.buffer.byteLength / WASM_PAGE;
        const needPages = Math.ceil(needBytes / WASM_PAGE);
        if (needPages > havePages) this.wasm.mem.grow(needPages - havePages);
        this.view();
      } else {
        const next = new ArrayBuffer(needBytes);
        new Int8Array(next).set(this.bytes);
        this.bytes = new Int8Array(next);
        this.scoresView = new Int32Array(next, this.scoresOffset, this.blockRows);
      }
    } catch (err) {
      throw new ArenaFullError(`in-memory vector index cannot grow to ${needBytes} bytes: ${String(err)}`);
    }
    this.capacityBlocks = newCapacity;
  }
}

/**
 * The arenas of one set of stores (EmbeddedStoreFiles), one per (padded dimension, kernel), shared
 * by those stores. An object its owner creates rather than module state, so nothing about the
 * stores lives on in the process once the owner is gone.
 */
export class Int8Arenas {
  private readonly arenas = new Map<string, Int8Arena>();

  /** `helperMinRows`: partitions of at least this many rows share their scan with a second thread. */
  constructor(private readonly helperMinRows = defaultHelperMinRows()) {}

  arenaFor(dimension: number, kernel: SearchKernel): Int8Arena {
    const useWasm = kernel !== 'js' && kernelModuleOrNull() !== null;
    const stride = paddedLength(dimension);
    const key = `${useWasm ? 'wasm' : 'js'}:${stride}`;
    let arena = this.arenas.get(key);
    if (!arena) {
      arena = new Int8Arena(stride, useWasm ? instantiateKernel() : null, this.helperMinRows);
      this.arenas.set(key, arena);
    }
    // No SIMD module, or no shared memory for its instance: the arena has the JS kernel.
    if (kernel === 'wasm' && arena.kernel !== 'wasm')
      throw new Error('EmbeddedVectorStore: the WebAssembly SIMD kernel is not available in this runtime');
    return arena;
  }

  /** Stops the arenas' scan helpers; the arenas stay usable, scanning on one thread. */
  close(): void {
    for (const arena of this.arenas.values()) arena.close();
  }
}

/** Partitions from 4,096 rows on share their scan, where the process may run on more than one core. */
function defaultHelperMinRows(): number {
  return availableParallelism() > 1 ? 4096 : Infinity;
}
