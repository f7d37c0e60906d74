/**
 * The noun phrases mem0's entity extraction asks compromise for, computed once per text and, where
 * the engine would only wait, on another thread.
 *
 * mem0ai's `extractEntities(text)` makes one call into compromise (an NLP library):
 * `nlp(text).nouns().out('array')`. It was about a quarter of a save's CPU on the engine thread
(profile of bench/save-profile.ts) and ~2 ms of a search's, and it ran
 * more than once for the same text: the entity oracle predicts a save's entities by running mem0's
 * search code on each extracted memory, then mem0's add extracts them again. `NounPhrases` stands
 * in for compromise's `nlp` inside mem0 (it is installed in the module cache before mem0ai loads,
 * see load.ts) and keeps the noun phrases of recent texts: a text seen before is not parsed again,
 * and anything else mem0 might ask of compromise goes to compromise unchanged.
 *
 * `prefetch(texts)` has them parsed on a second thread (a worker with its own copy of compromise)
 * while the engine awaits the answer, and remembers them: the save path does this for the
 * extracted memories before predicting their entities, the recall path for the query before it
 * analyses it (when the thread is idle, and for every other search of a burst, see recall.ts).
 * The engine's thread is then free for other callers' work in the meantime. The
 * answers are the same by construction (same library, same text, same call; checked at start),
 * and nothing depends on the thread: while it starts, when it is busy, after it failed, or for a
 * text too long to keep, the phrases are computed where mem0 asks for them, as before.
 *
 * One instance per thread: compromise is a module, and mem0 holds the one it required.
 */
import { Worker } from 'node:worker_threads';

/** The part of compromise's `nlp` mem0 uses (the rest of the module passes through untouched). */
export type Nlp = (text: string, ...rest: unknown[]) => NlpDoc;
interface NlpDoc {
  nouns(): { out(format?: string): unknown };
}

/** Recent texts kept; a save brings ~3, a search 1. */
const CAPACITY = 512;
/** Longer texts are neither kept nor sent to the thread (a long message would pin memory). */
const MAX_TEXT = 8192;
/** Texts the thread may hold before `prefetch` leaves the rest to the engine (both threads then work). */
const MAX_IN_FLIGHT = 8;
/**
 * A thread that has not answered by then is taken for stuck: texts are parsed locally from then
 * on. It holds at most 8 texts of a few ms each; the margin is for an engine thread that was busy
 * when the answer came (its timers run before its messages).
 */
const ANSWER_TIMEOUT_MS = 5000;

/**
 * Parses the thread runs before it takes work: compromise's first calls in a fresh thread are
 * 5-40 times slower than once its code is compiled (measured: 57 ms, then 3-10 ms, ~1.5 ms after
 * ~150 calls), and a cold thread would make a search slower than parsing on the engine's warm one.
 */
const WARM_UP_PARSES = 160;

/**
 * The thread's heap. With V8's defaults a worker's heap grew to ~85 MiB of RSS over 12,000 parses
 * (measured with a throwaway script); a 4 MB young generation holds it at ~40 MiB for ~5 % more
 * time per parse. A thread that runs out of it exits, and texts are parsed on the engine thread.
 */
const THREAD_HEAP = { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 96 };

// The thread's whole program (plain JavaScript, evaluated as is in the new thread).
const THREAD_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const nlp = require(workerData.compromise);
const who = ['My sister Grace', 'The user', 'Bob Marley', 'Our team lead in Berlin', 'Dr. Alice Smith'];
const what = ['moved to Austin last spring', 'prefers green tea over coffee', 'is allergic to peanuts and shellfish',
  'works on the payments service at Acme Corp', 'asked about the "Project Phoenix" launch date'];
for (let i = 0; i < ${WARM_UP_PARSES}; i++) {
  nlp(who[i % who.length] + ' ' + what[Math.floor(i / who.length) % what.length] + (i % 3 === 0 ? '?' : '.')).nouns().out('array');
}
parentPort.on('message', ({ id, texts }) => {
  try {
    parentPort.postMessage({ id, phrases: texts.map((text) => nlp(text).nouns().out('array')) });
  } catch (err) {
    parentPort.postMessage({ id, error: String(err) });
  }
});
parentPort.postMessage({ ready: true });
`;

interface Answer {
  id?: number;
  phrases?: string[][];
  error?: string;
  ready?: boolean;
}

export interface NounPhraseCounts {
  /** Texts parsed on the calling thread (mem0 asked and the text was not known). */
  parsedHere: number;
  /** Texts parsed on the second thread. */
  parsedThere: number;
  /** Asks answered from what was kept. */
  hits: number;
}

/** A property of one of compromise's objects, methods bound to it. */
function compromiseValue(target: object, prop: string | symbol): unknown {
  const value: unknown = Reflect.get(target, prop);
  return typeof value === 'function' ? value.bind(target) : value;
}

export class NounPhrases {
  private readonly kept = new Map<string, readonly string[]>();
  private worker: Worker | undefined;
  private ready = false;
  private nextId = 1;
  /** Texts the thread is parsing, and the promise that resolves when they are kept. */
  private readonly flying = new Map<string, Promise<void>>();
  private readonly waiting = new Map<number, { texts: string[]; done: () => void; timer: NodeJS.Timeout }>();
  readonly counts: NounPhraseCounts = { parsedHere: 0, parsedThere: 0, hits: 0 };

  private users = 0;
  private starting = false;
  private failed = false;

  /** `modulePath`: the compromise file `nlp` came from, for the second thread (none without it). */
  constructor(
    private readonly nlp: Nlp,
    private readonly modulePath?: string,
  ) {}

  /** The noun phrases of `text`, as `nlp(text).nouns().out('array')` gives them. */
  of(text: string): string[] {
    const known = this.kept.get(text);
    if (known) {
      this.counts.hits++;
      return [...known];
    }
    this.counts.parsedHere++;
    const phrases = this.parse(text);
    this.keep(text, phrases);
    return [...phrases];
  }

  /**
   * A stand-in for compromise's `nlp`: every property of the module is compromise's own; a call
   * with one text returns a document whose `nouns().out('array')` comes from `of`, and whose every
   * other use is compromise's document for the text.
   */
  standIn(): Nlp {
    return new Proxy(this.nlp, {
      apply: (target, thisArg, args: unknown[]) => {
        const [text] = args;
        if (args.length !== 1 || typeof text !== 'string') return Reflect.apply(target, thisArg, args) as NlpDoc;
        return this.document(text);
      },
    });
  }

  /**
   * Lets this instance run the second thread until the returned release is called (one thread for
   * all users). The thread starts after the first prefetch that is not urgent (a save's, or one of
   * a burst of searches that wait for their turn anyway; neither is delayed by it: starting a
   * thread holds the thread that starts it for milliseconds, and the thread's start-up work,
   * ~0.2 s to load compromise and ~0.5 s of warm-up parses, is kept out of an engine's own start
   * and of searches). It takes prefetches once it has given the same answer for a probe text as
   * this thread; until then, and for good if it fails, `prefetch` returns at once.
   */
  useThread(): () => void {
    this.users++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.users--;
      if (this.users === 0) this.stopThread();
    };
  }

  private startThread(): void {
    if (this.worker || this.starting || this.failed || this.users === 0 || this.modulePath === undefined) return;
    const modulePath = this.modulePath;
    this.starting = true;
    setImmediate(() => {
      this.starting = false;
      if (this.worker || this.failed || this.users === 0) return;
      const worker = new Worker(THREAD_SOURCE, { eval: true, workerData: { compromise: modulePath }, resourceLimits: THREAD_HEAP });
      this.worker = worker;
      worker.unref();
      worker.on('message', (answer: Answer) => this.answered(answer));
      worker.on('error', () => this.fail());
      worker.on('exit', () => {
        if (this.worker === worker) this.fail();
      });
    });
  }

  /** Whether the second thread takes prefetches. */
  get threadReady(): boolean {
    return this.ready;
  }

  /**
   * Has the noun phrases of `texts` computed on the second thread and kept, resolving when they
   * are (never rejects). Texts already kept, too long to keep, or beyond what the thread should
   * hold at once are left to be parsed where they are asked for. `urgent` (a search, whose caller
   * waits): only when the thread is idle, so that it never waits behind saves' texts, and it does
   * not start the thread (a start inside a lone search would delay it; saves and bursts start it).
   */
  prefetch(texts: readonly string[], options: { urgent?: boolean } = {}): Promise<void> {
    const worker = this.worker;
    if (!worker && !options.urgent) this.startThread();
    if (!worker || !this.ready) return Promise.resolve();
    const maxQueued = options.urgent ? 1 : MAX_IN_FLIGHT;
    const waits: Promise<void>[] = [];
    const send: string[] = [];
    for (const text of new Set(texts)) {
      const flying = this.flying.get(text);
      if (flying) waits.push(flying);
      else if (this.flying.size + send.length < maxQueued && text.length <= MAX_TEXT && !this.kept.has(text)) send.push(text);
    }
    if (send.length > 0) {
      const id = this.nextId++;
      const sent = new Promise<void>((resolve) => {
        // Stuck: what it holds is parsed here when asked for, and it gets no more.
        const timer = setTimeout(() => this.fail(), ANSWER_TIMEOUT_MS);
        timer.unref();
        this.waiting.set(id, { texts: send, done: resolve, timer });
      });
      for (const text of send) this.flying.set(text, sent);
      worker.postMessage({ id, texts: send });
      waits.push(sent);
    }
    return waits.length === 0 ? Promise.resolve() : Promise.all(waits).then(() => undefined);
  }

  /** A thread that failed, hung or answered differently is not used again. */
  private fail(): void {
    this.failed = true;
    this.stopThread();
  }

  /** Stops the second thread (idempotent); pending prefetches resolve, their texts are parsed here. */
  private stopThread(): void {
    const worker = this.worker;
    this.ready = false;
    this.worker = undefined;
    for (const pending of this.waiting.values()) {
      clearTimeout(pending.timer);
      pending.done();
    }
    this.waiting.clear();
    this.flying.clear();
    if (worker) void worker.terminate();
  }

  private answered(answer: Answer): void {
    if (answer.ready) {
      this.checkThread();
      return;
    }
    const pending = answer.id === undefined ? undefined : this.waiting.get(answer.id);
    if (!pending || answer.id === undefined) return;
    this.waiting.delete(answer.id);
    clearTimeout(pending.timer);
    for (const text of pending.texts) this.flying.delete(text);
    const phrases = answer.phrases;
    if (Array.isArray(phrases) && phrases.length === pending.texts.length) {
      pending.texts.forEach((text, i) => {
        const list = phrases[i];
        if (Array.isArray(list)) {
          this.keep(text, list.map(String));
          if (this.ready) this.counts.parsedThere++;
        }
      });
    } else {
      this.fail();
    }
    pending.done();
  }

  /** The thread's answer for a probe must be this thread's, or it is not used. */
  private checkThread(): void {
    const worker = this.worker;
    if (!worker) return;
    const probe = 'Alice Smith moved to the old harbour district of Lisbon with her two grey cats.';
    const expected = JSON.stringify(this.parse(probe));
    const id = this.nextId++;
    const timer = setTimeout(() => this.fail(), ANSWER_TIMEOUT_MS);
    timer.unref();
    this.waiting.set(id, {
      texts: [probe],
      timer,
      done: () => {
        const got = this.kept.get(probe);
        if (this.worker === worker && got && JSON.stringify(got) === expected) this.ready = true;
        else if (this.worker === worker) this.fail();
      },
    });
    worker.postMessage({ id, texts: [probe] });
  }

  private parse(text: string): string[] {
    const out = this.nlp(text).nouns().out('array');
    return Array.isArray(out) ? out.map(String) : [];
  }

  /** Keeps `phrases` (a fresh array the caller hands over; `of` gives out copies). */
  private keep(text: string, phrases: readonly string[]): void {
    if (text.length > MAX_TEXT) return;
    this.kept.delete(text);
    this.kept.set(text, phrases);
    if (this.kept.size > CAPACITY) {
      const oldest = this.kept.keys().next();
      if (!oldest.done) this.kept.delete(oldest.value);
    }
  }

  private document(text: string): NlpDoc {
    let real: NlpDoc | undefined;
    const doc = (): NlpDoc => {
      real ??= this.nlp(text);
      return real;
    };
    const nouns = () =>
      new Proxy(
        { out: (format?: string): unknown => (format === 'array' ? this.of(text) : doc().nouns().out(format)) },
        { get: (own, prop) => (prop === 'out' ? own.out : compromiseValue(doc().nouns(), prop)) },
      );
    return new Proxy({ nouns } as NlpDoc, {
      get: (own, prop) => (prop === 'nouns' ? own.nouns : compromiseValue(doc(), prop)),
    });
  }
}
