/**
 * The int8 dot-product kernel: a WebAssembly SIMD module assembled from opcodes, and the plain JS
 * kernel used where WebAssembly SIMD is unavailable.
 */

export type SearchKernel = 'auto' | 'wasm' | 'js';

/*
 * The WASM kernel is assembled here from opcodes rather than shipped as a binary or built with a
 * toolchain, so the source stays reviewable (about 40 lines). It imports a shared memory
 * ("env"."mem") and exports
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
  const Q = 0,
    V = 1,
    ROWS = 2,
    STRIDE = 3,
    OUT = 4,
    ROW_END = 5,
    OUT_END = 6,
    QP = 7,
    ACC0 = 8,
    ACC1 = 9,
    QV = 10,
    VV = 11;
  // acc += dot(extend(QV), extend(VV)): the 16 codes of each side are loaded once, then widened by halves.
  const half = (extend: number, acc: number): number[] => [
    ...get(acc),
    ...get(QV),
    ...simd(extend),
    ...get(VV),
    ...simd(extend),
    ...simd(DOT_I16),
    ...simd(I32X4_ADD),
    ...set(acc),
  ];
  const body = [
    ...get(OUT),
    ...get(ROWS),
    ...i32Const(2),
    I32_SHL,
    I32_ADD,
    ...set(OUT_END),
    BLOCK,
    VOID,
    ...get(ROWS),
    I32_EQZ,
    BR_IF,
    0,
    LOOP,
    VOID, // one row per iteration
    ...v128Zero,
    ...set(ACC0),
    ...v128Zero,
    ...set(ACC1),
    ...get(Q),
    ...set(QP),
    ...get(V),
    ...get(STRIDE),
    I32_ADD,
    ...set(ROW_END),
    LOOP,
    VOID, // 16 codes per iteration
    ...get(QP),
    ...v128Load,
    ...set(QV),
    ...get(V),
    ...v128Load,
    ...set(VV),
    ...half(EXTEND_LOW_S, ACC0),
    ...half(EXTEND_HIGH_S, ACC1),
    ...get(QP),
    ...i32Const(16),
    I32_ADD,
    ...set(QP),
    ...get(V),
    ...i32Const(16),
    I32_ADD,
    ...tee(V),
    ...get(ROW_END),
    I32_LT_U,
    BR_IF,
    0,
    END,
    ...get(OUT),
    ...get(ACC0),
    ...get(ACC1),
    ...simd(I32X4_ADD),
    ...tee(ACC0),
    ...simd(I32X4_EXTRACT_LANE, 0),
    ...get(ACC0),
    ...simd(I32X4_EXTRACT_LANE, 1),
    I32_ADD,
    ...get(ACC0),
    ...simd(I32X4_EXTRACT_LANE, 2),
    I32_ADD,
    ...get(ACC0),
    ...simd(I32X4_EXTRACT_LANE, 3),
    I32_ADD,
    I32_STORE,
    2,
    0,
    ...get(OUT),
    ...i32Const(4),
    I32_ADD,
    ...tee(OUT),
    ...get(OUT_END),
    I32_LT_U,
    BR_IF,
    0,
    END,
    END,
    END,
  ];
  const func = [2, 3, I32, 4, V128, ...body]; // locals: 3 x i32, 4 x v128
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, [1, 0x60, 5, I32, I32, I32, I32, I32, 0]), // type: (i32 x5) -> ()
    // import env.mem: a shared memory of at least 1 page, at most 4 GiB (shared, so that the scan
    // helper's instance (scan-helper.ts) reads the same rows)
    ...section(2, [1, ...name('env'), ...name('mem'), 0x02, 0x03, 1, ...uleb(MAX_PAGES)]),
    ...section(3, [1, 0]), // one function of type 0
    ...section(7, [1, ...name('scores'), 0x00, 0]),
    ...section(10, [1, ...uleb(func.length), ...func]),
  ]);
}

/** The kernel's memory pages: 64 KiB each, at most 4 GiB. */
export const WASM_PAGE = 65536;
const MAX_PAGES = 65536;

export interface WasmMemoryLike {
  readonly buffer: ArrayBufferLike;
  grow(deltaPages: number): number;
}
export interface WasmKernel {
  scores(q: number, v: number, rows: number, strideBytes: number, out: number): void;
  mem: WasmMemoryLike;
  /** The compiled module, for another thread to instantiate on the same memory. */
  module: object;
}
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => WasmMemoryLike;
}

// @types/node does not declare WebAssembly, so reach it through globalThis with a narrow shape.
const wasmApi = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;
// Process-wide on purpose: the compiled module (or the finding that this runtime has no
// WebAssembly SIMD) is immutable and holds no memory of its own; every arena instantiates it with
// its own memory (instantiateKernel), so sharing it shares no state between stores.
let kernelModule: object | null | undefined;

export function kernelModuleOrNull(): object | null {
  if (kernelModule === undefined) {
    kernelModule = null;
    try {
      const bytes = buildInt8DotKernelWasm();
      if (wasmApi?.validate(bytes)) kernelModule = new wasmApi.Module(bytes);
    } catch {
      kernelModule = null; // no WebAssembly or no SIMD (e.g. --jitless): the JS kernel is used
    }
  }
  return kernelModule;
}

/** A new kernel instance with its own (shared) memory, one page to start with (one per arena). */
export function instantiateKernel(): WasmKernel | null {
  const mod = kernelModuleOrNull();
  if (!mod || !wasmApi) return null;
  try {
    const mem = new wasmApi.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
    const exports = new wasmApi.Instance(mod, { env: { mem } }).exports as Partial<WasmKernel>;
    if (typeof exports.scores !== 'function') return null;
    return { scores: exports.scores, mem, module: mod };
  } catch {
    return null; // no shared WebAssembly memory here: the JS kernel is used
  }
}

/** Which kernel "auto" resolves to in this process. */
export function embeddedVectorStoreKernel(): 'wasm' | 'js' {
  return kernelModuleOrNull() ? 'wasm' : 'js';
}

/** The code at byte `i` of the arena; the arena lays out every row it scores, so one missing is a bug. */
function codeAt(i8: Int8Array, i: number): number {
  const c = i8[i];
  if (c === undefined) throw new RangeError(`jsScores: byte ${i} is outside the arena's ${i8.length} bytes`);
  return c;
}

/** The JS kernel: integer dot products of `rows` rows of `stride` codes at byte `v` with the codes at byte `q`. */
export function jsScores(i8: Int8Array, q: number, v: number, rows: number, stride: number, out: Int32Array): void {
  for (let r = 0; r < rows; r++) {
    let s0 = 0;
    let s1 = 0;
    let off = v + r * stride;
    for (let i = q, end = q + stride; i < end; i += 4, off += 4) {
      s0 += codeAt(i8, i) * codeAt(i8, off) + codeAt(i8, i + 1) * codeAt(i8, off + 1);
      s1 += codeAt(i8, i + 2) * codeAt(i8, off + 2) + codeAt(i8, i + 3) * codeAt(i8, off + 3);
    }
    out[r] = s0 + s1;
  }
}
