/**
 * Byte spans of values inside a JSON text, found without parsing it into objects, so a caller can
 * change one value and keep every other byte as the client sent it.
 *
 * The scanner only walks structure (strings with their escapes, nesting); it assumes text that
 * `JSON.parse` already accepted and answers undefined for anything it does not expect. It reads
 * UTF-8 bytes directly: every structural character is ASCII, and no byte of a multi-byte character
 * can be mistaken for one. Where an object repeats a key, the last one counts, as in `JSON.parse`.
 */

export interface Span {
  /** Offset of the value's first byte. */
  start: number;
  /** Offset just past its last byte. */
  end: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;

function isSpace(byte: number | undefined): boolean {
  return byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09;
}

class Scanner {
  constructor(
    private readonly buf: Buffer,
    public pos: number,
  ) {}

  peek(): number | undefined {
    return this.buf[this.pos];
  }

  skipSpace(): void {
    while (isSpace(this.buf[this.pos])) this.pos++;
  }

  /** Moves past the string that starts here; false when none does. */
  skipString(): boolean {
    if (this.buf[this.pos] !== QUOTE) return false;
    this.pos++;
    while (this.pos < this.buf.length) {
      const byte = this.buf[this.pos];
      if (byte === BACKSLASH) this.pos += 2;
      else if (byte === QUOTE) {
        this.pos++;
        return true;
      } else this.pos++;
    }
    return false;
  }

  /** Moves past the value that starts here (after any space); its span, or undefined. */
  skipValue(): Span | undefined {
    this.skipSpace();
    const start = this.pos;
    const first = this.peek();
    if (first === QUOTE) return this.skipString() ? { start, end: this.pos } : undefined;
    if (first === OPEN_BRACE || first === OPEN_BRACKET) {
      let depth = 0;
      while (this.pos < this.buf.length) {
        const byte = this.buf[this.pos];
        if (byte === QUOTE) {
          if (!this.skipString()) return undefined;
          continue;
        }
        if (byte === OPEN_BRACE || byte === OPEN_BRACKET) depth++;
        else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
          depth--;
          if (depth === 0) {
            this.pos++;
            return { start, end: this.pos };
          }
        }
        this.pos++;
      }
      return undefined;
    }
    // A number, true, false or null: up to the next delimiter.
    while (this.pos < this.buf.length) {
      const byte = this.buf[this.pos];
      if (byte === COMMA || byte === CLOSE_BRACE || byte === CLOSE_BRACKET || isSpace(byte)) break;
      this.pos++;
    }
    return this.pos > start ? { start, end: this.pos } : undefined;
  }

  /** The decoded key of the string that starts here, moving past it and its colon. */
  readKey(): string | undefined {
    const start = this.pos;
    if (!this.skipString()) return undefined;
    const raw = this.buf.subarray(start, this.pos);
    // Escapes are rare in keys: decode only when there is one.
    const key = raw.includes(BACKSLASH) ? (JSON.parse(raw.toString('utf8')) as string) : raw.subarray(1, raw.length - 1).toString('utf8');
    this.skipSpace();
    if (this.peek() !== COLON) return undefined;
    this.pos++;
    return key;
  }
}

/** Span of the value of `key` in the object spanning `object` (the last such key), or undefined. */
export function memberSpan(buf: Buffer, object: Span, key: string): Span | undefined {
  const s = new Scanner(buf, object.start);
  s.skipSpace();
  if (s.peek() !== OPEN_BRACE) return undefined;
  s.pos++;
  let found: Span | undefined;
  for (;;) {
    s.skipSpace();
    if (s.peek() === CLOSE_BRACE) return found;
    const name = s.readKey();
    if (name === undefined) return undefined;
    const value = s.skipValue();
    if (!value) return undefined;
    if (name === key) found = value;
    s.skipSpace();
    const next = s.peek();
    if (next === COMMA) s.pos++;
    else if (next === CLOSE_BRACE) return found;
    else return undefined;
  }
}

/** Spans of the elements of the array spanning `array`, or undefined when it is not an array. */
export function elementSpans(buf: Buffer, array: Span): Span[] | undefined {
  const s = new Scanner(buf, array.start);
  s.skipSpace();
  if (s.peek() !== OPEN_BRACKET) return undefined;
  s.pos++;
  const spans: Span[] = [];
  s.skipSpace();
  if (s.peek() === CLOSE_BRACKET) return spans;
  for (;;) {
    const value = s.skipValue();
    if (!value) return undefined;
    spans.push(value);
    s.skipSpace();
    const next = s.peek();
    if (next === COMMA) s.pos++;
    else if (next === CLOSE_BRACKET) return spans;
    else return undefined;
  }
}

/** The span of the whole document's top-level value (leading and trailing space excluded). */
export function documentSpan(buf: Buffer): Span | undefined {
  const s = new Scanner(buf, 0);
  const span = s.skipValue();
  if (!span) return undefined;
  s.skipSpace();
  return s.pos === buf.length ? span : undefined;
}

/**
 * Whether the JSON text in `buf` nests objects and arrays deeper than `max`. Stops at the first
 * level past it, so a body made of millions of `[` costs microseconds, not the seconds `JSON.parse`
 * would spend on it (and the stack overflow re-serialising it would end in).
 */
export function nestsDeeperThan(buf: Buffer, max: number): boolean {
  let depth = 0;
  for (let i = 0; i < buf.length; i++) {
    const byte = buf[i];
    if (byte === QUOTE) {
      // Skip the string: brackets inside it are text.
      for (i++; i < buf.length && buf[i] !== QUOTE; i++) if (buf[i] === BACKSLASH) i++;
    } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
      if (++depth > max) return true;
    } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) depth--;
  }
  return false;
}
