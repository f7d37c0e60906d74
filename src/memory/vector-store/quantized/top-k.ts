/** Top-k selection: a binary min-heap holding the best k (score, item) pairs. */

interface Entry<T> {
  score: number;
  item: T;
}

export class TopK<T> {
  private readonly heap: Array<Entry<T>> = [];

  constructor(readonly k: number) {}

  get size(): number {
    return this.heap.length;
  }

  /** The score a newcomer must beat (−∞ until the heap is full). */
  get floor(): number {
    const min = this.heap[0];
    return this.heap.length < this.k || min === undefined ? -Infinity : min.score;
  }

  push(score: number, item: T): void {
    if (this.k <= 0) return;
    const h = this.heap;
    if (h.length < this.k) {
      const entry = { score, item };
      // Sift up from a new last slot: parents that score above the newcomer move down into it.
      let i = h.length;
      h.push(entry);
      while (i > 0) {
        const parent = (i - 1) >> 1;
        const p = this.at(parent);
        if (p.score <= score) break;
        h[i] = p;
        i = parent;
      }
      h[i] = entry;
      return;
    }
    if (score <= this.at(0).score) return;
    const entry = { score, item };
    // Replace the minimum and sift down: the smaller child moves up while it scores below the newcomer.
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      let min = score;
      if (l < h.length) {
        const left = this.at(l);
        if (left.score < min) {
          m = l;
          min = left.score;
        }
      }
      if (r < h.length && this.at(r).score < min) m = r;
      if (m === i) break;
      h[i] = this.at(m);
      i = m;
    }
    h[i] = entry;
  }

  /** Best first. */
  sorted(): Array<{ score: number; item: T }> {
    return this.heap.map(({ score, item }) => ({ score, item })).sort((a, b) => b.score - a.score);
  }

  /** The entry at heap position `i` (positions below `size` always hold one). */
  private at(i: number): Entry<T> {
    const entry = this.heap[i];
    if (entry === undefined) throw new RangeError(`TopK: no entry at heap position ${i} of ${this.heap.length}`);
    return entry;
  }
}
