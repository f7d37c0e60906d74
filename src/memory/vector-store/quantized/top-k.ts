/** Top-k selection: a binary min-heap holding the best k (score, item) pairs. */

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
