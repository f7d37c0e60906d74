/**
 * Int8 quantization of unit vectors: the codes and scale of a vector, how far a quantized score
 * can be from the exact one, the `qvector` column's form on disk, and how many candidates a
 * search keeps for exact rescoring.
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

/** A unit vector ≈ `codes × scale`. `codes` has the arena's padded length (zeros past the dimension). */
export interface Quantized {
  codes: Int8Array;
  scale: number;
}

/** Rows are padded to a multiple of 16 bytes: the kernel consumes 16 codes per step. */
export function paddedLength(dimension: number): number {
  return Math.ceil(dimension / 16) * 16;
}

// Loops over vectors here and in embedded/vectors.ts read `v[i] ?? 0` for indexes they keep in
// range. Indexed on purpose: for-of and map over a Float32Array are several times slower in Node
// 20. And inline: a shared helper that threw on a miss ran ~10× slower once the store's several
// loops called it (the exact rescoring of 74 rows of 1536 dims: 2.4 ms against 0.25 ms).

/** Quantizes a unit vector (a zero vector gives zero codes and scale 0: it scores 0). */
export function quantize(unit: Float32Array): Quantized {
  const codes = new Int8Array(paddedLength(unit.length));
  let max = 0;
  for (let i = 0; i < unit.length; i++) max = Math.max(max, Math.abs(unit[i] ?? 0));
  if (max === 0) return { codes, scale: 0 };
  const scale = max / 127;
  for (let i = 0; i < unit.length; i++) codes[i] = Math.round((unit[i] ?? 0) / scale);
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
  for (let i = 0; i < q.codes.length; i++) {
    const c = q.codes[i];
    if (c === undefined) throw new RangeError(`l1Norm: code ${i} of ${q.codes.length}`);
    sum += Math.abs(c);
  }
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
