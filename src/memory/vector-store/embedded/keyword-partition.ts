/**
 * The keyword index of one loaded scope, held in memory: each row's length in tokens and its terms'
 * frequencies, counted as FTS5's unicode61 tokenizer counts them. BM25 over the scope's rows is
 * then summed here from the postings of the query's terms, with the file-wide statistics FTS5
 * itself uses (row count, token total and each term's document count, read from the FTS5 index),
 * so the scores are FTS5's `bm25()` to the bit and the ranking is FTS5's `ORDER BY rank` (equal
 * scores in rowid order). What it spares: FTS5 ranking every matching row of the file and sorting
 * them all before the best come out (at 100k rows and a query matching a third of them, about
 * 40 ms against a few here).
 *
 * Exact only where the tokens are known: a row whose text is not ASCII (unicode61 folds and splits
 * other scripts by tables this file does not repeat) makes the scope's index unusable while the row
 * exists, and the store asks FTS5 instead; so does a query term that is not one ASCII token.
 */

const K1 = 1.2;
const B = 0.75;
/** Bytes per row, per posting and per distinct term, roughly (for the cache budget). */
const ROW_BYTES = 160;
const POSTING_BYTES = 12;
const TERM_BYTES = 120;

/**
 * unicode61's tokens of ASCII text (runs of letters and digits, folded to lower case; every other
 * ASCII character separates), or null for text with any other character.
 */
export function asciiTokens(text: string): string[] | null {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the whole ASCII range is the point
  if (!/^[\x00-\x7f]*$/.test(text)) return null;
  return text.toLowerCase().match(/[a-z0-9]+/g) ?? [];
}

/** A query term the index can answer for: one ASCII token, as FTS5 would read the quoted phrase. */
export function isSingleAsciiToken(term: string): boolean {
  return /^[a-z0-9]+$/.test(term);
}

/**
 * The text FTS5 indexes for a row (the SQL of keywords.ts: `textLemmatized` unless missing or
 * empty, else `data`, else ''); undefined when a value is not a string (its SQL text form is
 * not repeated here).
 */
export function keywordText(payload: Record<string, unknown>): string | undefined {
  const lemmatized = payload['textLemmatized'];
  if (lemmatized !== undefined && lemmatized !== null && lemmatized !== '') return typeof lemmatized === 'string' ? lemmatized : undefined;
  const data = payload['data'];
  if (data === undefined || data === null) return '';
  return typeof data === 'string' ? data : undefined;
}

/** File-wide BM25 statistics for one query, as FTS5 computes them. */
export interface KeywordStats {
  /** Average row length in tokens (token total / row count of the FTS5 index). */
  avgdl: number;
  /** Each query term's idf, in query order. */
  idf: readonly number[];
}

export interface KeywordHit {
  id: string;
  rowid: number;
  score: number;
}

/** One term's rows and their frequencies, unordered, in growable typed arrays. */
class Posting {
  rows = new Int32Array(4);
  freqs = new Int32Array(4);
  size = 0;

  add(row: number, freq: number): void {
    if (this.size === this.rows.length) {
      const rows = new Int32Array(this.size * 2);
      rows.set(this.rows);
      this.rows = rows;
      const freqs = new Int32Array(this.size * 2);
      freqs.set(this.freqs);
      this.freqs = freqs;
    }
    this.rows[this.size] = row;
    this.freqs[this.size] = freq;
    this.size++;
  }

  /** Where `row` is (searched from the end: recent rows sit there), or -1. */
  indexOf(row: number): number {
    for (let i = this.size - 1; i >= 0; i--) if (this.rows[i] === row) return i;
    return -1;
  }

  /** Removes the entry at `i`, moving the last entry into its place. */
  removeAt(i: number): void {
    const last = --this.size;
    this.rows[i] = this.rows[last] as number;
    this.freqs[i] = this.freqs[last] as number;
  }
}

const IMAGE_MAGIC = 'EVK1';
const IMAGE_HEADER_BYTES = 16;

export class KeywordPartition {
  private readonly ids: string[] = [];
  private readonly rowids: number[] = [];
  private readonly lengths: number[] = [];
  /** Each row's distinct terms, as term numbers. */
  private readonly termsOf: Int32Array[] = [];
  private readonly rowOf = new Map<string, number>();
  private readonly termNumbers = new Map<string, number>();
  private readonly postings: Posting[] = [];
  /** Rows whose tokens are not known here (see the file comment), by id. */
  private readonly opaque = new Set<string>();
  private postingCount = 0;
  /** Set by the builder once every row of the scope has been read. */
  ready = false;
  private scores = new Float64Array(0);
  private seen = new Uint8Array(0);

  constructor(readonly key: string) {}

  /** Whether every row's tokens are known (else searches go to FTS5). */
  get usable(): boolean {
    return this.opaque.size === 0;
  }

  bytes(): number {
    return this.ids.length * ROW_BYTES + this.postingCount * POSTING_BYTES + this.termNumbers.size * TERM_BYTES;
  }

  /** Adds a row or replaces its text (`text` undefined: a value FTS5 reads in a way not repeated here). */
  upsert(id: string, rowid: number, text: string | undefined): void {
    this.remove(id);
    const tokens = text === undefined ? null : asciiTokens(text);
    if (tokens === null) {
      this.opaque.add(id);
      return;
    }
    const freq = new Map<number, number>();
    for (const t of tokens) {
      const term = this.termNumberOf(t);
      freq.set(term, (freq.get(term) ?? 0) + 1);
    }
    this.add(id, rowid, tokens.length, Int32Array.from(freq.keys()), Int32Array.from(freq.values()));
  }

  /** Adds a row (absent until now) of `length` tokens with these distinct term numbers and frequencies. */
  private add(id: string, rowid: number, length: number, terms: Int32Array, freqs: ArrayLike<number>): void {
    const row = this.ids.length;
    this.ids.push(id);
    this.rowids.push(rowid);
    this.lengths.push(length);
    this.rowOf.set(id, row);
    this.termsOf.push(terms);
    for (let i = 0; i < terms.length; i++) this.postingOf(terms[i] as number).add(row, freqs[i] as number);
    this.postingCount += terms.length;
  }

  private termNumberOf(term: string): number {
    let number = this.termNumbers.get(term);
    if (number === undefined) {
      number = this.postings.length;
      this.termNumbers.set(term, number);
      this.postings.push(new Posting());
    }
    return number;
  }

  /** Removes a row, moving the last row into its place. */
  remove(id: string): void {
    if (this.opaque.delete(id)) return;
    const row = this.rowOf.get(id);
    if (row === undefined) return;
    for (const term of this.termsAt(row)) {
      const posting = this.postingOf(term);
      const at = posting.indexOf(row);
      if (at < 0) throw new Error(`keyword partition ${this.key}: row ${row} missing from a posting`);
      posting.removeAt(at);
      this.postingCount--;
    }
    const last = this.ids.length - 1;
    if (row !== last) {
      for (const term of this.termsAt(last)) {
        const posting = this.postingOf(term);
        const at = posting.indexOf(last);
        if (at < 0) throw new Error(`keyword partition ${this.key}: row ${last} missing from a posting`);
        posting.rows[at] = row;
      }
      const movedId = this.ids[last] as string;
      this.ids[row] = movedId;
      this.rowids[row] = this.rowids[last] as number;
      this.lengths[row] = this.lengths[last] as number;
      this.termsOf[row] = this.termsAt(last);
      this.rowOf.set(movedId, row);
    }
    this.ids.pop();
    this.rowids.pop();
    this.lengths.pop();
    this.termsOf.pop();
    this.rowOf.delete(id);
  }

  /**
   * The best `k` rows matching any of `terms` (distinct single tokens), best first, by FTS5's
   * bm25 (higher is better here, as the store reports it): per row, the sum in query order of
   * idf · f·(k1+1) / (f + k1·(1 − b + b·D/avgdl)); equal scores in rowid order.
   */
  search(terms: readonly string[], stats: KeywordStats, k: number): KeywordHit[] {
    const n = this.ids.length;
    if (k <= 0 || n === 0) return [];
    if (this.scores.length < n) {
      this.scores = new Float64Array(Math.max(n, this.scores.length * 2));
      this.seen = new Uint8Array(this.scores.length);
    }
    const acc = this.scores;
    const seen = this.seen;
    const lengths = this.lengths;
    const touched: number[] = [];
    terms.forEach((term, i) => {
      const number = this.termNumbers.get(term);
      const idf = stats.idf[i];
      if (number === undefined || idf === undefined) return;
      const { rows, freqs, size } = this.postingOf(number);
      for (let j = 0; j < size; j++) {
        const row = rows[j] as number;
        const f = freqs[j] as number;
        const part = idf * ((f * (K1 + 1.0)) / (f + K1 * (1 - B + (B * (lengths[row] as number)) / stats.avgdl)));
        if (seen[row] === 0) {
          seen[row] = 1;
          touched.push(row);
          acc[row] = part;
        } else {
          acc[row] = (acc[row] as number) + part;
        }
      }
    });
    const best = new BoundedBest(k, acc, this.rowids);
    for (const row of touched) {
      seen[row] = 0;
      best.offer(row);
    }
    return best.sorted().map((row) => ({ id: this.ids[row] as string, rowid: this.rowids[row] as number, score: acc[row] as number }));
  }

  /**
   * The index as one blob (for `loadImage` at a later start; null while a row is opaque):
   * "EVK1", then row count, term count and the byte length of a JSON array [ids, terms] (u32 LE
   * each), the JSON (padded to 8 bytes), each row's rowid (f64), length and distinct-term count
   * (u32 each), then per row its (term number, frequency) pairs (u32 each).
   */
  toImage(): Buffer | null {
    if (!this.usable) return null;
    const n = this.ids.length;
    const json = Buffer.from(JSON.stringify([this.ids, [...this.termNumbers.keys()]]), 'utf8');
    const fixedAt = IMAGE_HEADER_BYTES + Math.ceil(json.length / 8) * 8;
    const pairsAt = fixedAt + n * 16;
    const out = Buffer.alloc(pairsAt + this.postingCount * 8);
    out.write(IMAGE_MAGIC, 0, 'latin1');
    out.writeUInt32LE(n, 4);
    out.writeUInt32LE(this.termNumbers.size, 8);
    out.writeUInt32LE(json.length, 12);
    json.copy(out, IMAGE_HEADER_BYTES);
    // Each row's pairs start where the rows before it end; one pass over the postings fills them.
    const next = new Float64Array(n);
    let pairs = 0;
    for (let row = 0; row < n; row++) {
      const count = this.termsAt(row).length;
      out.writeDoubleLE(this.rowids[row] as number, fixedAt + row * 16);
      out.writeUInt32LE(this.lengths[row] as number, fixedAt + row * 16 + 8);
      out.writeUInt32LE(count, fixedAt + row * 16 + 12);
      next[row] = pairsAt + pairs * 8;
      pairs += count;
    }
    this.postings.forEach((posting, term) => {
      for (let j = 0; j < posting.size; j++) {
        const row = posting.rows[j] as number;
        const at = next[row] as number;
        out.writeUInt32LE(term, at);
        out.writeUInt32LE(posting.freqs[j] as number, at + 4);
        next[row] = at + 8;
      }
    });
    return out;
  }

  /**
   * Adds the rows of a `toImage` blob (upserts, so rows written since are kept as they are now
   * only if the image is of the current version: the caller checks). False, and nothing added,
   * when the blob is not such an image.
   */
  loadImage(image: Buffer): boolean {
    if (image.length < IMAGE_HEADER_BYTES || image.toString('latin1', 0, 4) !== IMAGE_MAGIC) return false;
    const n = image.readUInt32LE(4);
    const termCount = image.readUInt32LE(8);
    const jsonBytes = image.readUInt32LE(12);
    const fixedAt = IMAGE_HEADER_BYTES + Math.ceil(jsonBytes / 8) * 8;
    const pairsAt = fixedAt + n * 16;
    if (image.length < pairsAt) return false;
    let parsed: unknown;
    try {
      parsed = JSON.parse(image.toString('utf8', IMAGE_HEADER_BYTES, IMAGE_HEADER_BYTES + jsonBytes));
    } catch {
      return false;
    }
    if (!Array.isArray(parsed) || parsed.length !== 2) return false;
    const [ids, terms] = parsed as [unknown, unknown];
    if (!Array.isArray(ids) || ids.length !== n || !ids.every((id) => typeof id === 'string')) return false;
    if (!Array.isArray(terms) || terms.length !== termCount || !terms.every((t) => typeof t === 'string' && isSingleAsciiToken(t)))
      return false;
    // Check every pair before adding anything, so a damaged image adds nothing.
    let pairs = 0;
    for (let row = 0; row < n; row++) pairs += image.readUInt32LE(fixedAt + row * 16 + 12);
    if (image.length !== pairsAt + pairs * 8) return false;
    for (let i = 0; i < pairs; i++) {
      if (image.readUInt32LE(pairsAt + i * 8) >= termCount || image.readUInt32LE(pairsAt + i * 8 + 4) === 0) return false;
    }
    const local = (terms as string[]).map((t) => this.termNumberOf(t)); // the image's term numbers here
    let at = pairsAt;
    for (let row = 0; row < n; row++) {
      const id = ids[row] as string;
      this.remove(id);
      const count = image.readUInt32LE(fixedAt + row * 16 + 12);
      const rowTerms = new Int32Array(count);
      const freqs = new Int32Array(count);
      for (let j = 0; j < count; j++, at += 8) {
        rowTerms[j] = local[image.readUInt32LE(at)] as number;
        freqs[j] = image.readUInt32LE(at + 4);
      }
      this.add(id, image.readDoubleLE(fixedAt + row * 16), image.readUInt32LE(fixedAt + row * 16 + 8), rowTerms, freqs);
    }
    return true;
  }

  private postingOf(term: number): Posting {
    const posting = this.postings[term];
    if (posting === undefined) throw new RangeError(`keyword partition ${this.key}: no term ${term} of ${this.postings.length}`);
    return posting;
  }

  private termsAt(row: number): Int32Array {
    const terms = this.termsOf[row];
    if (terms === undefined) throw new RangeError(`keyword partition ${this.key}: no row ${row} of ${this.ids.length}`);
    return terms;
  }
}

/**
 * The best `k` rows by score, equal scores in rowid order (FTS5's `ORDER BY rank`): a min-heap whose
 * top is the worst row kept.
 */
class BoundedBest {
  private readonly heap: number[] = [];

  constructor(
    private readonly k: number,
    private readonly scores: Float64Array,
    private readonly rowids: readonly number[],
  ) {}

  offer(row: number): void {
    const h = this.heap;
    if (h.length < this.k) {
      let i = h.length;
      h.push(row);
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (!this.worse(row, h[parent] as number)) break;
        h[i] = h[parent] as number;
        i = parent;
      }
      h[i] = row;
      return;
    }
    if (!this.worse(h[0] as number, row)) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      let worst = row;
      if (l < h.length && this.worse(h[l] as number, worst)) {
        m = l;
        worst = h[l] as number;
      }
      if (r < h.length && this.worse(h[r] as number, worst)) m = r;
      if (m === i) break;
      h[i] = h[m] as number;
      i = m;
    }
    h[i] = row;
  }

  /** Best first. */
  sorted(): number[] {
    return [...this.heap].sort((a, b) => (this.worse(a, b) ? 1 : this.worse(b, a) ? -1 : 0));
  }

  /** Whether row a ranks below row b: a lower score, or the same score and a later rowid. */
  private worse(a: number, b: number): boolean {
    const sa = this.scores[a] as number;
    const sb = this.scores[b] as number;
    return sa < sb || (sa === sb && (this.rowids[a] as number) > (this.rowids[b] as number));
  }
}
