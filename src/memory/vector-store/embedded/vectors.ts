/** Vector helpers: validating, normalizing and scoring float32 vectors, and their BLOB form. */
import { quantize, type Quantized } from '../quantized/quantize';

/** A float32 copy of a caller's vector, checked at run time (a missing one fails like any non-array). */
export function toFloat32(vector: readonly number[] | undefined, dimension: number, what: string): Float32Array {
  if (!Array.isArray(vector) && !ArrayBuffer.isView(vector)) {
    throw new Error(`${what}: vector must be an array of numbers`);
  }
  if (vector.length !== dimension) {
    throw new Error(`${what}: vector dimension mismatch, expected ${dimension}, got ${vector.length}`);
  }
  const out = new Float32Array(dimension);
  for (let i = 0; i < dimension; i++) {
    const v = vector[i];
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      throw new Error(`${what}: vector contains a non-finite value at index ${i}`);
    }
    out[i] = v;
  }
  return out;
}

/** Unit-length copy (a zero vector stays zero, so it scores 0 rather than NaN). */
export function normalized(v: Float32Array): Float32Array {
  let sum = 0;
  for (let i = 0; i < v.length; i++) {
    const x = v[i] ?? 0;
    sum += x * x;
  }
  const out = new Float32Array(v.length);
  if (sum === 0) return out;
  const inv = 1 / Math.sqrt(sum);
  for (let i = 0; i < v.length; i++) out[i] = (v[i] ?? 0) * inv;
  return out;
}

/** The int8 codes of a vector's direction, as partitions and the `qvector` column hold them. */
export function quantizeVector(v: Float32Array): Quantized {
  return quantize(normalized(v));
}

/** cos(u, v) for a unit vector u (0 for a zero v). */
export function cosineToUnit(unit: Float32Array, v: Float32Array): number {
  let dot = 0;
  let norm = 0;
  for (let i = 0; i < v.length; i++) {
    const x = v[i] ?? 0;
    dot += (unit[i] ?? 0) * x;
    norm += x * x;
  }
  return norm === 0 ? 0 : dot / Math.sqrt(norm);
}

export function blobOf(v: Float32Array): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

export function vectorFromBlob(blob: Buffer, dimension: number, id: string): Float32Array {
  if (blob.byteLength !== dimension * 4) {
    throw new Error(`stored vector ${id} has ${blob.byteLength / 4} dimensions, expected ${dimension}`);
  }
  // Blobs may start at any byte offset of Node's buffer pool; Float32Array needs 4-byte alignment.
  if (blob.byteOffset % 4 === 0) return new Float32Array(blob.buffer, blob.byteOffset, dimension);
  return new Float32Array(new Uint8Array(blob).buffer);
}

export function clampScore(s: number): number {
  return Math.min(1, Math.max(-1, s));
}
