/**
 * Partitions: the rows of one (collection, scope) held in memory, as ids and int8 codes in the
 * arena (the in-memory side of the embedded store), and the image a partition is saved and
 * loaded whole as.
 */
import type { Int8Arena } from './arena';
import { quantizationErrorBound, type Quantized } from './quantize';
import type { TopK } from './top-k';

const PARTITION_OVERHEAD_BYTES = 4096;
/** Per-row bookkeeping beyond the codes (id string, map entry, scale), roughly. */
const ROW_OVERHEAD_BYTES = 120;

/** A search's lower limit on exact scores, and what `looseErrorBound` needs to apply it. */
export interface ScoreFloor {
  score: number;
  queryL1: number;
  dimension: number;
}

const IMAGE_MAGIC = 'EVI2';
const IMAGE_HEADER_BYTES = 16;

/** Part 0 of an image (see `Partition.toImage`), or undefined when it is not one for `stride`. */
function readImageHead(part: Buffer, stride: number): { ids: string[]; scales: Float64Array } | undefined {
  if (part.byteLength < IMAGE_HEADER_BYTES || part.toString('latin1', 0, 4) !== IMAGE_MAGIC || part.readUInt32LE(4) !== stride)
    return undefined;
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

  constructor(
    readonly key: string,
    readonly arena: Int8Arena,
  ) {}

  get count(): number {
    return this.ids.length;
  }

  bytes(): number {
    return PARTITION_OVERHEAD_BYTES + this.blocks.length * this.arena.blockBytes + this.ids.length * ROW_OVERHEAD_BYTES;
  }

  has(id: string): boolean {
    return this.rowOf.has(id);
  }

  /** The id of a row (rows `0..count - 1` always have one). */
  idAt(row: number): string {
    const id = this.ids[row];
    if (id === undefined) throw new RangeError(`partition ${this.key}: no row ${row} of ${this.ids.length}`);
    return id;
  }

  /**
   * `errorBound` without reading the row's codes: ‖sv·cv‖₁ ≤ ‖v‖₁ + d·sv/2 ≤ √d + d·sv/2 for a
   * unit v. Never smaller than `errorBound`, and the same for every row of one scale.
   */
  looseErrorBound(row: number, query: Quantized, queryL1: number, dimension: number): number {
    return this.looseBound(this.scales[row] ?? 0, query, queryL1, dimension);
  }

  private looseBound(scale: number, query: Quantized, queryL1: number, dimension: number): number {
    return quantizationErrorBound(query, queryL1, scale, Math.sqrt(dimension) + (dimension * scale) / 2, dimension);
  }

  /** The most quantization can have moved this row's score against `query` (`quantizationErrorBound`). */
  errorBound(row: number, query: Quantized, queryL1: number, dimension: number): number {
    const scale = this.scales[row] ?? 0;
    const slot = row % this.arena.blockRows;
    const codes = this.arena.rowsOf(this.blockOf(row), slot + 1);
    let sum = 0;
    for (let i = slot * this.arena.stride, end = i + dimension; i < end; i++) {
      const c = codes[i];
      if (c === undefined) throw new RangeError(`partition ${this.key}: row ${row} has no code ${i - slot * this.arena.stride}`);
      sum += Math.abs(c);
    }
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
    this.arena.writeRow(this.blockOf(row), row % this.arena.blockRows, q.codes);
  }

  /** Removes a row by moving the last row into its place, keeping rows dense. */
  remove(id: string): void {
    const row = this.rowOf.get(id);
    if (row === undefined) return;
    const last = this.ids.length - 1;
    const blockRows = this.arena.blockRows;
    if (row !== last) {
      this.arena.copyRow(this.blockOf(last), last % blockRows, this.blockOf(row), row % blockRows);
      const movedId = this.idAt(last);
      this.ids[row] = movedId;
      this.scales[row] = this.scaleAt(last);
      this.rowOf.set(movedId, row);
    }
    this.ids.pop();
    this.scales.pop();
    this.rowOf.delete(id);
    if (last % blockRows === 0) {
      const emptied = this.blocks.pop();
      if (emptied === undefined) throw new Error(`partition ${this.key}: row ${last} had no block`);
      this.arena.freeBlock(emptied);
    }
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
    this.scales.forEach((scale, i) => {
      head.writeDoubleLE(scale, scalesAt + i * 8);
    });
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
          this.rowOf.set(id, i);
        });
        for (const scale of head.scales) this.scales.push(scale);
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
      fn(this.blockOf(row), slot, count, done);
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
   * filter) only runs for rows whose score could enter it. With a `floor`, a row whose exact score
   * cannot reach `floor.score` (its approximate score plus `looseErrorBound` is below) is not
   * offered: it would only take a place in `top` from a row that can.
   */
  search(query: Quantized, top: TopK<number>, accept: ((row: number) => boolean) | null, floor?: ScoreFloor): void {
    const n = this.ids.length;
    if (n === 0 || query.scale === 0) return;
    this.arena.setQuery(query.codes);
    const blockRows = this.arena.blockRows;
    const scales = this.scales;
    // looseErrorBound is linear in the row's scale: fixed + perScale · scale, one multiply per row.
    const floorScore = floor?.score ?? -Infinity;
    const fixed = floor ? this.looseBound(0, query, floor.queryL1, floor.dimension) : 0;
    const perScale = floor ? this.looseBound(1, query, floor.queryL1, floor.dimension) - fixed : 0;
    // All blocks at once when the arena shares the scan with its helper thread, else block by block.
    const lastRows = n - (this.blocks.length - 1) * blockRows;
    const all = lastRows > 0 && lastRows <= blockRows ? this.arena.scoreBlocks(this.blocks, lastRows) : null;
    // The score a row must beat to enter `top`, read again only when `top` changed.
    let beat = top.floor;
    let first = 0;
    for (let j = 0; j < this.blocks.length; j++) {
      const block = this.blocks[j] ?? 0;
      const rows = Math.min(blockRows, n - first);
      const dots = all ?? this.arena.scoreBlock(block, rows);
      const at = all ? j * blockRows : 0;
      for (let s = 0; s < rows; s++) {
        const dot = dots[at + s];
        const scale = scales[first + s];
        if (dot === undefined || scale === undefined)
          throw new RangeError(`partition ${this.key}: no score or scale for row ${first + s} of ${n}`);
        const score = dot * query.scale * scale;
        if (score <= beat) continue;
        if (score < floorScore && score + fixed + perScale * scale < floorScore) continue;
        if (accept && !accept(first + s)) continue;
        top.push(score, first + s);
        beat = top.floor;
      }
      first += blockRows;
    }
  }

  /** The arena block holding a row (every row `0..count - 1` has one). */
  private blockOf(row: number): number {
    const block = this.blocks[Math.floor(row / this.arena.blockRows)];
    if (block === undefined) throw new RangeError(`partition ${this.key}: row ${row} has no block (${this.blocks.length} blocks)`);
    return block;
  }

  private scaleAt(row: number): number {
    const scale = this.scales[row];
    if (scale === undefined) throw new RangeError(`partition ${this.key}: no scale for row ${row} of ${this.scales.length}`);
    return scale;
  }
}
