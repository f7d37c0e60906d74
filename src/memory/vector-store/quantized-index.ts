/**
 * The in-memory side of the embedded store: per-scope partitions of int8-quantized unit vectors,
 * scored by a WebAssembly SIMD kernel (plain JS where WebAssembly SIMD is unavailable).
 *
 * Why int8: a search over a user's vectors is bound by memory bandwidth, not arithmetic. One byte
 * per dimension instead of four makes a scan about four times cheaper, makes a partition a quarter
 * of the memory (100k × 1536 dims: 150 MiB, not 600), and makes loading one from disk a quarter of
 * the reads. The scores are only used to pick candidates: the store rescores them exactly from
 * the float32 vectors on disk, so the scores a search returns are exact cosine similarities.
 *
 * Quantization: a unit vector u is stored as codes c_i = round(u_i / s), s = max|u_i| / 127, so
 * u ≈ s·c and u·v ≈ s_u·s_v·(c_u·c_v), with an integer dot product. The error of one approximate
 * score is far below the oversampling margin the store leaves (see `candidateCount`).
 */

// ---------------------------------------------------------------------------------------------
// Quantized vectors and their on-disk form
// ---------------------------------------------------------------------------------------------

export type SearchKernel = 'auto' | 'wasm' | 'js';

/** A unit vector ≈ `codes × scale`. `codes` has the arena's padded length (zeros past the dimension). */
export interface Quantized {
  codes: Int8Array;
  scale: number;
}

/** Rows are padded to a multiple of 16 bytes: the kernel consumes 16 codes per step. */
export function paddedLength(dimension: number): number {
  return Math.ceil(dimension / 16) * 16;
}

/** Quantizes a unit vector (a zero vector gives zero codes and scale 0: it scores 0). */
export function quantize(unit: Float32Array): Quantized {
  const codes = new Int8Array(paddedLength(unit.length));
  let max = 0;
  for (let i = 0; i < unit.length; i++) max = Math.max(max, Math.abs(unit[i]!));
  if (max === 0) return { codes, scale: 0 };
  const scale = max / 127;
  for (let i = 0; i < unit.length; i++) codes[i] = Math.round(unit[i]! / scale);
  return { codes, scale };
}

/**
 * How far a quantized score `sq · sv · cq·cv` can be from the exact dot product of the two vectors
 * it stands for, at most. Each code is within half its scale of the true component, so with
 * q = sq·cq + eq and v = sv·cv + ev (|eq_i| ≤ sq/2, |ev_i| ≤ sv/2):
 * |q·v − sq·sv·cq·cv| ≤ (sv/2)·‖sq·cq‖₁ + (sq/2)·‖sv·cv‖₁ + d·sq·sv/4.
 * `queryL1` and `rowL1` are the two ‖·‖₁ (`l1Norm`); plus a little for the float32 rounding of
 * the stored scales.
 */
export function quantizationErrorBound(query: Quantized, queryL1: number, rowScale: number, rowL1: number, dimension: number): number {
  const sq = query.scale;
  const sv = rowScale;
  return (sv / 2) * queryL1 + (sq / 2) * rowL1 + (dimension * sq * sv) / 4 + 1e-6;
}

/** ‖scale·codes‖₁ of a quantized vector. */
export function l1Norm(q: Quantized): number {
  let sum = 0;
  for (let i = 0; i < q.codes.length; i++) sum += Math.abs(q.codes[i]!);
  return sum * q.scale;
}

/** `[scale: float32 LE][codes: dimension bytes]`: the `qvector` column. */
export function encodeQuantized(q: Quantized, dimension: number): Buffer {
  const out = Buffer.alloc(4 + dimension);
  out.writeFloatLE(q.scale, 0);
  out.set(new Uint8Array(q.codes.buffer, q.codes.byteOffset, dimension), 4);
  return out;
}

/** The quantized vector of a `qvector` blob, or undefined when the blob does not fit the dimension. */
export function decodeQuantized(blob: Buffer, dimension: number): Quantized | undefined {
  if (blob.byteLength !== 4 + dimension) return undefined;
  const codes = new Int8Array(paddedLength(dimension));
  codes.set(new Int8Array(blob.buffer, blob.byteOffset + 4, dimension));
  return { codes, scale: blob.readFloatLE(0) };
}

/**
 * How many approximate candidates a search keeps for exact rescoring when it wants `k`: twice as
 * many, and at least 64 more. The approximate scores of 1536-dim unit vectors are off by about
 * 1e-3 (at most ~3e-2 in the worst case the bound allows), so the true top k is among them.
 */
export function candidateCount(k: number): number {
  return Math.max(2 * k, k + 64);
}

// ---------------------------------------------------------------------------------------------
// Top-k selection: a binary min-heap holding the best k (score, item) pairs
// ---------------------------------------------------------------------------------------------

export class TopK<T> {
  private readonly scores: number[] = [];
  private readonly items: T[] = [];

  constructor(readonly k: number) {}

  get size(): number {
    return this.scores.length;
  }

  /** The score a newcomer must beat (−∞ until the heap is full). */
  get floor(): number {
    return this.scores.length < this.k ? -Infinity : this.scores[0]!;
  }

  push(score: number, item: T): void {
    if (this.k <= 0) return;
    const s = this.scores;
    const it = this.items;
    if (s.length < this.k) {
      s.push(score);
      it.push(item);
      let i = s.length - 1;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (s[parent]! <= s[i]!) break;
        this.swap(i, parent);
        i = parent;
      }
      return;
    }
    if (score <= s[0]!) return;
    s[0] = score;
    it[0] = item;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < s.length && s[l]! < s[m]!) m = l;
      if (r < s.length && s[r]! < s[m]!) m = r;
      if (m === i) break;
      this.swap(i, m);
      i = m;
    }
  }

  /** Best first. */
  sorted(): Array<{ score: number; item: T }> {
    return this.scores.map((score, i) => ({ score, item: this.items[i]! })).sort((a, b) => b.score - a.score);
  }

  private swap(a: number, b: number): void {
    const s = this.scores;
    const it = this.items;
    const ts = s[a]!;
    s[a] = s[b]!;
    s[b] = ts;
    const ti = it[a]!;
    it[a] = it[b]!;
    it[b] = ti;
  }
}

// ---------------------------------------------------------------------------------------------
// The int8 dot-product kernel
// ---------------------------------------------------------------------------------------------

/*
 * The WASM kernel is assembled here from opcodes rather than shipped as a binary or built with a
 * toolchain, so the source stays reviewable (about 40 lines). It exports its memory ("mem") and
 *   scores(q, v, rows, strideBytes, out)
 * which, for `rows` consecutive rows of `strideBytes` int8 codes starting at byte offset v, stores
 * the integer dot product with the codes at q as i32 at out, out+4, ... . strideBytes must be a
 * positive multiple of 16: each step widens 16 codes of each side to i16 (low and high halves),
 * multiplies and pairwise-adds them into i32 lanes (i32x4.dot_i16x8_s), into two accumulators;
 * each side's 16 codes are loaded once per step.
 * |dot| ≤ 127² · 16384 dims fits i32 with room to spare.
 */
function uleb(n: number): number[] {
  const out: number[] = [];
  let v = n >>> 0;
  do {
    let byte = v & 0x7f;
    v >>>= 7;
    if (v !== 0) byte |= 0x80;
    out.push(byte);
  } while (v !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  let v = n | 0;
  for (;;) {
    const byte = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (byte & 0x40) === 0) || (v === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

function buildInt8DotKernelWasm(): Uint8Array {
  const I32 = 0x7f;
  const V128 = 0x7b;
  const section = (id: number, bytes: number[]): number[] => [id, ...uleb(bytes.length), ...bytes];
  const name = (s: string): number[] => [...uleb(s.length), ...Array.from(Buffer.from(s, 'utf8'))];
  const get = (i: number): number[] => [0x20, i];
  const set = (i: number): number[] => [0x21, i];
  const tee = (i: number): number[] => [0x22, i];
  const i32Const = (n: number): number[] => [0x41, ...sleb(n)];
  const simd = (op: number, ...imm: number[]): number[] => [0xfd, ...uleb(op), ...imm];
  const v128Load = simd(0x00, 4, 0); // align 2^4, offset 0
  const v128Zero = simd(0x0c, ...new Array<number>(16).fill(0));
  const EXTEND_LOW_S = 0x87; // i16x8.extend_low_i8x16_s
  const EXTEND_HIGH_S = 0x88; // i16x8.extend_high_i8x16_s
  const DOT_I16 = 0xba; // i32x4.dot_i16x8_s
  const I32X4_ADD = 0xae;
  const I32X4_EXTRACT_LANE = 0x1b;
  const I32_ADD = 0x6a;
  const I32_SHL = 0x74;
  const I32_LT_U = 0x49;
  const I32_EQZ = 0x45;
  const I32_STORE = 0x36;
  const BLOCK = 0x02;
  const LOOP = 0x03;
  const BR_IF = 0x0d;
  const END = 0x0b;
  const VOID = 0x40;
  // params 0..4, then locals
  const Q = 0, V = 1, ROWS = 2, STRIDE = 3, OUT = 4, ROW_END = 5, OUT_END = 6, QP = 7, ACC0 = 8, ACC1 = 9, QV = 10, VV = 11;
  // acc += dot(extend(QV), extend(VV)): the 16 codes of each side are loaded once, then widened by halves.
  const half = (extend: number, acc: number): number[] => [
    ...get(acc), ...get(QV), ...simd(extend), ...get(VV), ...simd(extend), ...simd(DOT_I16), ...simd(I32X4_ADD), ...set(acc),
  ];
  const body = [
    ...get(OUT), ...get(ROWS), ...i32Const(2), I32_SHL, I32_ADD, ...set(OUT_END),
    BLOCK, VOID,
    ...get(ROWS), I32_EQZ, BR_IF, 0,
    LOOP, VOID, // one row per iteration
    ...v128Zero, ...set(ACC0),
    ...v128Zero, ...set(ACC1),
    ...get(Q), ...set(QP),
    ...get(V), ...get(STRIDE), I32_ADD, ...set(ROW_END),
    LOOP, VOID, // 16 codes per iteration
    ...get(QP), ...v128Load, ...set(QV),
    ...get(V), ...v128Load, ...set(VV),
    ...half(EXTEND_LOW_S, ACC0),
    ...half(EXTEND_HIGH_S, ACC1),
    ...get(QP), ...i32Const(16), I32_ADD, ...set(QP),
    ...get(V), ...i32Const(16), I32_ADD, ...tee(V),
    ...get(ROW_END), I32_LT_U, BR_IF, 0,
    END,
    ...get(OUT),
    ...get(ACC0), ...get(ACC1), ...simd(I32X4_ADD), ...tee(ACC0), ...simd(I32X4_EXTRACT_LANE, 0),
    ...get(ACC0), ...simd(I32X4_EXTRACT_LANE, 1), I32_ADD,
    ...get(ACC0), ...simd(I32X4_EXTRACT_LANE, 2), I32_ADD,
    ...get(ACC0), ...simd(I32X4_EXTRACT_LANE, 3), I32_ADD,
    I32_STORE, 2, 0,
    ...get(OUT), ...i32Const(4), I32_ADD, ...tee(OUT),
    ...get(OUT_END), I32_LT_U, BR_IF, 0,
    END,
    END,
    END,
  ];
  const func = [2, 3, I32, 4, V128, ...body]; // locals: 3 x i32, 4 x v128
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 5, I32, I32, I32, I32, I32, 0]), // type: (i32 x5) -> ()
    ...section(3, [1, 0]), // one function of type 0
    ...section(5, [1, 0x01, 1, ...uleb(65536)]), // memory: min 1 page, max 4 GiB
    ...section(7, [2, ...name('scores'), 0x00, 0, ...name('mem'), 0x02, 0]),
    ...section(10, [1, ...uleb(func.length), ...func]),
  ]);
}

interface WasmMemoryLike {
  readonly buffer: ArrayBuffer;
  grow(deltaPages: number): number;
}
interface WasmKernel {
  scores(q: number, v: number, rows: number, strideBytes: number, out: number): void;
  mem: WasmMemoryLike;
}
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}

// @types/node does not declare WebAssembly, so reach it through globalThis with a narrow shape.
const wasmApi = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;
let kernelModule: object | null | undefined;

function kernelModuleOrNull(): object | null {
  if (kernelModule === undefined) {
    kernelModule = null;
    try {
      const bytes = buildInt8DotKernelWasm();
      if (wasmApi && wasmApi.validate(bytes)) kernelModule = new wasmApi.Module(bytes);
    } catch {
      kernelModule = null; // no WebAssembly or no SIMD (e.g. --jitless): the JS kernel is used
    }
  }
  return kernelModule;
}

/** A new kernel instance with its own memory (one per arena). */
function instantiateKernel(): WasmKernel | null {
  const mod = kernelModuleOrNull();
  if (!mod || !wasmApi) return null;
  const exports = new wasmApi.Instance(mod, {}).exports as Partial<WasmKernel>;
  if (typeof exports.scores !== 'function' || !exports.mem) return null;
  return { scores: exports.scores, mem: exports.mem };
}

/** Which kernel "auto" resolves to in this process. */
export function embeddedVectorStoreKernel(): 'wasm' | 'js' {
  return kernelModuleOrNull() ? 'wasm' : 'js';
}

/** The JS kernel: integer dot products of `rows` rows of `stride` codes at byte `v` with the codes at byte `q`. */
function jsScores(i8: Int8Array, q: number, v: number, rows: number, stride: number, out: Int32Array): void {
  for (let r = 0; r < rows; r++) {
    let s0 = 0;
    let s1 = 0;
    let off = v + r * stride;
    for (let i = q, end = q + stride; i < end; i += 4, off += 4) {
      s0 += i8[i]! * i8[off]! + i8[i + 1]! * i8[off + 1]!;
      s1 += i8[i + 2]! * i8[off + 2]! + i8[i + 3]! * i8[off + 3]!;
    }
    out[r] = s0 + s1;
  }
}

// ---------------------------------------------------------------------------------------------
// Arena: fixed-size blocks of quantized rows in one growable buffer
// ---------------------------------------------------------------------------------------------

const WASM_PAGE = 65536;
const TARGET_BLOCK_BYTES = 65536;

export class ArenaFullError extends Error {}

/**
 * One arena per (padded dimension, kernel) per process, shared by all stores: a partition owns a
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
  private jsBuffer: ArrayBuffer | null;
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
      this.jsBuffer = null;
      const needPages = Math.ceil(this.headerBytes / WASM_PAGE) - wasm.mem.buffer.byteLength / WASM_PAGE;
      if (needPages > 0) wasm.mem.grow(needPages);
      this.bytes = new Int8Array(wasm.mem.buffer);
    } else {
      this.jsBuffer = new ArrayBuffer(this.headerBytes);
      this.bytes = new Int8Array(this.jsBuffer);
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
        new Uint8Array(next).set(new Uint8Array(this.jsBuffer!));
        this.jsBuffer = next;
        this.bytes = new Int8Array(next);
        this.scoresView = new Int32Array(next, this.scoresOffset, this.blockRows);
      }
    } catch (err) {
      throw new ArenaFullError(`in-memory vector index cannot grow to ${needBytes} bytes: ${String(err)}`);
    }
    this.capacityBlocks = newCapacity;
  }
}

const arenas = new Map<string, Int8Arena>();

export function arenaFor(dimension: number, kernel: SearchKernel): Int8Arena {
  const useWasm = kernel !== 'js' && kernelModuleOrNull() !== null;
  if (kernel === 'wasm' && !useWasm) throw new Error('EmbeddedVectorStore: the WebAssembly SIMD kernel is not available in this runtime');
  const stride = paddedLength(dimension);
  const key = `${useWasm ? 'wasm' : 'js'}:${stride}`;
  let arena = arenas.get(key);
  if (!arena) {
    arena = new Int8Arena(stride, useWasm ? instantiateKernel() : null);
    arenas.set(key, arena);
  }
  return arena;
}

// ---------------------------------------------------------------------------------------------
// Partitions: the rows of one (collection, scope) held in the arena
// ---------------------------------------------------------------------------------------------

/** Fixed per-partition overhead counted against the cache budget, so many tiny partitions also get evicted. */
const PARTITION_OVERHEAD_BYTES = 4096;
/** Per-row bookkeeping beyond the codes (id string, map entry, scale), roughly. */
const ROW_OVERHEAD_BYTES = 120;

const IMAGE_MAGIC = 'EVI2';
const IMAGE_HEADER_BYTES = 16;

/** Part 0 of an image (see `Partition.toImage`), or undefined when it is not one for `stride`. */
function readImageHead(part: Buffer, stride: number): { ids: string[]; scales: Float64Array } | undefined {
  if (part.byteLength < IMAGE_HEADER_BYTES || part.toString('latin1', 0, 4) !== IMAGE_MAGIC || part.readUInt32LE(4) !== stride) return undefined;
  const n = part.readUInt32LE(8);
  const idsBytes = part.readUInt32LE(12);
  const scalesAt = IMAGE_HEADER_BYTES + Math.ceil(idsBytes / 8) * 8;
  if (part.byteLength !== scalesAt + n * 8) return undefined;
  let ids: unknown;
  try {
    ids = JSON.parse(part.toString('utf8', IMAGE_HEADER_BYTES, IMAGE_HEADER_BYTES + idsBytes));
  } catch {
    return undefined;
  }
  if (!Array.isArray(ids) || ids.length !== n || !ids.every((id) => typeof id === 'string') || new Set(ids).size !== n) return undefined;
  const scales = new Float64Array(n);
  for (let i = 0; i < n; i++) scales[i] = part.readDoubleLE(scalesAt + i * 8);
  return { ids: ids as string[], scales };
}

/** Ids and quantized vectors only: payloads stay on disk and are read for results. */
export class Partition {
  readonly ids: string[] = [];
  private readonly scales: number[] = [];
  private readonly blocks: number[] = [];
  private readonly rowOf = new Map<string, number>();

  constructor(readonly key: string, readonly arena: Int8Arena) {}

  get count(): number {
    return this.ids.length;
  }

  bytes(): number {
    return PARTITION_OVERHEAD_BYTES + this.blocks.length * this.arena.blockBytes + this.ids.length * ROW_OVERHEAD_BYTES;
  }

  has(id: string): boolean {
    return this.rowOf.has(id);
  }

  /**
   * `errorBound` without reading the row's codes: ‖sv·cv‖₁ ≤ ‖v‖₁ + d·sv/2 ≤ √d + d·sv/2 for a
   * unit v. Never smaller than `errorBound`, and the same for every row of one scale.
   */
  looseErrorBound(row: number, query: Quantized, queryL1: number, dimension: number): number {
    const scale = this.scales[row] ?? 0;
    return quantizationErrorBound(query, queryL1, scale, Math.sqrt(dimension) + (dimension * scale) / 2, dimension);
  }

  /** The most quantization can have moved this row's score against `query` (`quantizationErrorBound`). */
  errorBound(row: number, query: Quantized, queryL1: number, dimension: number): number {
    const scale = this.scales[row] ?? 0;
    const blockRows = this.arena.blockRows;
    const slot = row % blockRows;
    const codes = this.arena.rowsOf(this.blocks[Math.floor(row / blockRows)]!, slot + 1);
    let sum = 0;
    for (let i = slot * this.arena.stride, end = i + dimension; i < end; i++) sum += Math.abs(codes[i]!);
    return quantizationErrorBound(query, queryL1, scale, sum * scale, dimension);
  }

  upsert(id: string, q: Quantized): void {
    let row = this.rowOf.get(id);
    if (row === undefined) {
      row = this.ids.length;
      if (row % this.arena.blockRows === 0) this.blocks.push(this.arena.allocBlock());
      this.ids.push(id);
      this.scales.push(q.scale);
      this.rowOf.set(id, row);
    } else {
      this.scales[row] = q.scale;
    }
    const blockRows = this.arena.blockRows;
    this.arena.writeRow(this.blocks[Math.floor(row / blockRows)]!, row % blockRows, q.codes);
  }

  /** Removes a row by moving the last row into its place, keeping rows dense. */
  remove(id: string): void {
    const row = this.rowOf.get(id);
    if (row === undefined) return;
    const last = this.ids.length - 1;
    const blockRows = this.arena.blockRows;
    if (row !== last) {
      this.arena.copyRow(this.blocks[Math.floor(last / blockRows)]!, last % blockRows, this.blocks[Math.floor(row / blockRows)]!, row % blockRows);
      const movedId = this.ids[last]!;
      this.ids[row] = movedId;
      this.scales[row] = this.scales[last]!;
      this.rowOf.set(movedId, row);
    }
    this.ids.pop();
    this.scales.pop();
    this.rowOf.delete(id);
    if (last % blockRows === 0) this.arena.freeBlock(this.blocks.pop()!);
  }

  /**
   * The partition as parts of at most `maxPartBytes` (for `loadImage` at a later start). Part 0:
   * "EVI2", stride, row count and the ids' byte length (u32 LE each), the ids as a JSON array
   * (padded to 8 bytes), each row's scale (f64 LE). Then the codes, `stride` bytes a row, a whole
   * number of rows per part.
   */
  toImage(maxPartBytes: number): Buffer[] {
    const n = this.ids.length;
    const stride = this.arena.stride;
    const ids = Buffer.from(JSON.stringify(this.ids), 'utf8');
    const scalesAt = IMAGE_HEADER_BYTES + Math.ceil(ids.length / 8) * 8;
    const head = Buffer.alloc(scalesAt + n * 8);
    head.write(IMAGE_MAGIC, 0, 'latin1');
    head.writeUInt32LE(stride, 4);
    head.writeUInt32LE(n, 8);
    head.writeUInt32LE(ids.length, 12);
    ids.copy(head, IMAGE_HEADER_BYTES);
    for (let i = 0; i < n; i++) head.writeDoubleLE(this.scales[i]!, scalesAt + i * 8);
    const parts = [head];
    const rowsPerPart = Math.max(1, Math.floor(maxPartBytes / stride));
    for (let first = 0; first < n; first += rowsPerPart) {
      const rows = Math.min(rowsPerPart, n - first);
      const part = Buffer.alloc(rows * stride);
      this.forEachRun(first, rows, (block, slot, count, offset) => {
        const codes = this.arena.rowsOf(block, slot + count).subarray(slot * stride);
        part.set(new Uint8Array(codes.buffer, codes.byteOffset, count * stride), offset * stride);
      });
      parts.push(part);
    }
    return parts;
  }

  /**
   * Fills an empty partition from `toImage`'s parts, in order. False (the partition left empty)
   * when they are not an image of this arena's stride or do not add up.
   */
  loadImage(parts: Iterable<Buffer>): boolean {
    if (this.ids.length !== 0) return false;
    const stride = this.arena.stride;
    let n = -1;
    let loaded = 0;
    for (const part of parts) {
      if (n < 0) {
        const head = readImageHead(part, stride);
        if (!head) return false;
        n = head.ids.length;
        const blockRows = this.arena.blockRows;
        for (let first = 0; first < n; first += blockRows) this.blocks.push(this.arena.allocBlock());
        head.ids.forEach((id, i) => {
          this.ids.push(id);
          this.scales.push(head.scales[i]!);
          this.rowOf.set(id, i);
        });
        continue;
      }
      const rows = part.byteLength / stride;
      if (!Number.isInteger(rows) || loaded + rows > n) break;
      this.forEachRun(loaded, rows, (block, slot, count, offset) => {
        this.arena.writeRows(block, slot, new Int8Array(part.buffer, part.byteOffset + offset * stride, count * stride));
      });
      loaded += rows;
    }
    if (n >= 0 && loaded === n) return true;
    this.release();
    return false;
  }

  /** Calls `fn` for each stretch of rows `first`..`first + rows` that lies in one block. */
  private forEachRun(first: number, rows: number, fn: (block: number, slot: number, count: number, offset: number) => void): void {
    const blockRows = this.arena.blockRows;
    for (let done = 0; done < rows; ) {
      const row = first + done;
      const slot = row % blockRows;
      const count = Math.min(blockRows - slot, rows - done);
      fn(this.blocks[Math.floor(row / blockRows)]!, slot, count, done);
      done += count;
    }
  }

  release(): void {
    for (const b of this.blocks) this.arena.freeBlock(b);
    this.blocks.length = 0;
    this.ids.length = 0;
    this.scales.length = 0;
    this.rowOf.clear();
  }

  /**
   * Offers every row's approximate cosine to `top` (a row index per entry); `accept` (a residual
   * filter) only runs for rows whose score could enter it.
   */
  search(query: Quantized, top: TopK<number>, accept: ((row: number) => boolean) | null): void {
    const n = this.ids.length;
    if (n === 0 || query.scale === 0) return;
    this.arena.setQuery(query.codes);
    const blockRows = this.arena.blockRows;
    const scales = this.scales;
    for (let b = 0; b < this.blocks.length; b++) {
      const first = b * blockRows;
      const rows = Math.min(blockRows, n - first);
      const dots = this.arena.scoreBlock(this.blocks[b]!, rows);
      for (let s = 0; s < rows; s++) {
        const score = dots[s]! * query.scale * scales[first + s]!;
        if (score <= top.floor) continue;
        if (accept && !accept(first + s)) continue;
        top.push(score, first + s);
      }
    }
  }
}
