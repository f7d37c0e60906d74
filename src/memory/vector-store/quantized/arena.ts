/** The arena: fixed-size blocks of quantized rows in one growable buffer (a WASM memory, or an ArrayBuffer for the JS kernel). */
import { instantiateKernel, jsScores, kernelModuleOrNull, type SearchKernel, type WasmKernel } from './kernel';
import { paddedLength } from './quantize';

const WASM_PAGE = 65536;
const TARGET_BLOCK_BYTES = 65536;

export class ArenaFullError extends Error {}

/**
 * One arena per (padded dimension, kernel) per Int8Arenas, shared by its stores: a partition owns a
 * list of blocks, so growing, shrinking and evicting partitions never moves other partitions'
 * vectors, and a block holds enough rows (~64 KiB) that the per-call overhead of the kernel is
 * negligible. Memory is reused through a free list; a WASM memory never shrinks.
 * Layout: [query row][scores of one block][blocks ...].
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

  constructor(stride: number, wasm: WasmKernel | null) {
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

  arenaFor(dimension: number, kernel: SearchKernel): Int8Arena {
    const useWasm = kernel !== 'js' && kernelModuleOrNull() !== null;
    if (kernel === 'wasm' && !useWasm) throw new Error('EmbeddedVectorStore: the WebAssembly SIMD kernel is not available in this runtime');
    const stride = paddedLength(dimension);
    const key = `${useWasm ? 'wasm' : 'js'}:${stride}`;
    let arena = this.arenas.get(key);
    if (!arena) {
      arena = new Int8Arena(stride, useWasm ? instantiateKernel() : null);
      this.arenas.set(key, arena);
    }
    return arena;
  }
}
