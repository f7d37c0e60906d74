/** A decoder of Server-Sent Events: bytes in, (event name, data) pairs out, with a bound on line and event size. */
import { StringDecoder } from 'node:string_decoder';

/** Turns SSE lines into events (WHATWG rules: LF, CRLF or CR endings, `:` comments, multi-line data). */
export class SseParser {
  private pending = '';
  private data: string[] = [];
  private dataSize = 0;
  private event = '';
  private readonly decoder = new StringDecoder('utf8');

  constructor(
    private readonly maxBytes: number,
    private readonly onEvent: (event: string, data: string) => void,
    private readonly onOverflow: () => void,
  ) {}

  write(chunk: Buffer): void {
    this.feed(this.decoder.write(chunk), false);
  }

  /** The body ended: an event without its closing blank line is dropped, as the spec says. */
  end(): void {
    this.feed(this.decoder.end(), true);
  }

  private feed(text: string, final: boolean): void {
    let buffer = this.pending + text;
    let start = 0;
    // Next LF / CR positions, searched again only once passed (-1: none left), so a chunk of
    // many lines is scanned once rather than once per line.
    let lf = buffer.indexOf('\n');
    let cr = buffer.indexOf('\r');
    for (;;) {
      if (lf >= 0 && lf < start) lf = buffer.indexOf('\n', start);
      if (cr >= 0 && cr < start) cr = buffer.indexOf('\r', start);
      if (lf < 0 && cr < 0) break;
      let end: number;
      let next: number;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        // A CR at the very end may be the first half of a CRLF split across chunks.
        if (cr === buffer.length - 1 && !final) break;
        end = cr;
        next = buffer[cr + 1] === '\n' ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(buffer.slice(start, end));
      start = next;
    }
    buffer = buffer.slice(start);
    if (buffer.length > this.maxBytes) {
      this.onOverflow();
      buffer = '';
    }
    this.pending = final ? '' : buffer;
  }

  private line(line: string): void {
    if (line === '') {
      if (this.data.length > 0) this.onEvent(this.event, this.data.join('\n'));
      this.data = [];
      this.dataSize = 0;
      this.event = '';
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') {
      this.dataSize += value.length;
      if (this.dataSize > this.maxBytes) {
        this.onOverflow();
        this.data = [];
        this.dataSize = 0;
        return;
      }
      this.data.push(value);
    } else if (field === 'event') {
      this.event = value;
    }
  }
}
