/**
 * NounPhrases: the stand-in for compromise inside mem0 gives compromise's answers, parses a text
 * once, and the second thread's parses are the ones kept.
 */
import { type Nlp, NounPhrases } from '../../src/memory/mem0/noun-phrases';

const file = require.resolve('compromise');
const compromise = require(file) as Nlp & { version?: string };

const TEXTS = [
  'My sister Grace moved to Austin last spring and works at the city library.',
  'The user prefers green tea over coffee in the morning.',
  'Bob Marley songs and a vintage record player in the living room',
  'I like tea.',
  '',
];

function direct(text: string): unknown {
  return compromise(text).nouns().out('array');
}

async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('NounPhrases', () => {
  test("stands in for compromise: nouns().out('array') as compromise gives it, parsed once per text", () => {
    const nouns = new NounPhrases(compromise);
    const nlp = nouns.standIn();
    for (const text of TEXTS) expect(nlp(text).nouns().out('array')).toEqual(direct(text));
    expect(nouns.counts).toEqual({ parsedHere: TEXTS.length, parsedThere: 0, hits: 0 });
    for (const text of TEXTS) expect(nlp(text).nouns().out('array')).toEqual(direct(text));
    expect(nouns.counts).toEqual({ parsedHere: TEXTS.length, parsedThere: 0, hits: TEXTS.length });
  });

  test('every other use of compromise goes to compromise unchanged', () => {
    const nouns = new NounPhrases(compromise);
    const nlp = nouns.standIn() as Nlp & { version?: string };
    const text = TEXTS[0] ?? '';
    const doc = nlp(text) as unknown as { text(): string; nouns(): { out(format?: string): unknown; length: number } };
    const real = compromise(text) as unknown as typeof doc;
    expect(doc.text()).toBe(real.text());
    expect(doc.nouns().out('text')).toBe(real.nouns().out('text'));
    expect(doc.nouns().length).toBe(real.nouns().length);
    expect(nlp.version).toBe(compromise.version);
    // A caller's array is its own: changing it does not change what is kept.
    const first = nlp(text).nouns().out('array') as string[];
    first.push('changed');
    expect(nlp(text).nouns().out('array')).toEqual(direct(text));
  });

  test('prefetch has the texts parsed on the second thread; mem0 then finds them kept', async () => {
    const nouns = new NounPhrases(compromise, file);
    const release = nouns.useThread();
    try {
      // A search's (urgent) prefetch does not start the thread; the first other one starts it and
      // does not wait for it: nothing is parsed ahead.
      await nouns.prefetch(TEXTS, { urgent: true });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(nouns.threadReady).toBe(false);
      await nouns.prefetch(TEXTS);
      expect(nouns.counts.parsedThere).toBe(0);
      await until(() => nouns.threadReady);
      await nouns.prefetch(TEXTS);
      expect(nouns.counts.parsedThere).toBe(TEXTS.length);
      const nlp = nouns.standIn();
      for (const text of TEXTS) expect(nlp(text).nouns().out('array')).toEqual(direct(text));
      expect(nouns.counts.parsedHere).toBe(0);
      expect(nouns.counts.hits).toBe(TEXTS.length);
      // Kept texts are not sent again; concurrent prefetches of one text share one parse.
      await Promise.all([
        nouns.prefetch(TEXTS),
        nouns.prefetch(['A new text about Lisbon.']),
        nouns.prefetch(['A new text about Lisbon.']),
      ]);
      expect(nouns.counts.parsedThere).toBe(TEXTS.length + 1);
      // An urgent prefetch goes to an idle thread, but not behind texts it is parsing.
      await nouns.prefetch(['Where does Grace work?'], { urgent: true });
      expect(nouns.counts.parsedThere).toBe(TEXTS.length + 2);
      const busy = nouns.prefetch(['Dan sold his boat in Bergen.']);
      await nouns.prefetch(['Who is Dan?'], { urgent: true });
      await busy;
      expect(nouns.counts.parsedThere).toBe(TEXTS.length + 3);
    } finally {
      release();
    }
    // Released: prefetch returns at once and the text is parsed where it is asked for.
    await nouns.prefetch(['After the thread stopped, Carol went to Oslo.']);
    expect(nouns.threadReady).toBe(false);
    expect(nouns.standIn()('After the thread stopped, Carol went to Oslo.').nouns().out('array')).toEqual(
      direct('After the thread stopped, Carol went to Oslo.'),
    );
    expect(nouns.counts.parsedHere).toBe(1);
  });

  test('a thread that cannot load compromise is not used: texts are parsed here', async () => {
    const nouns = new NounPhrases(compromise, '/nonexistent/compromise.cjs');
    const release = nouns.useThread();
    try {
      await nouns.prefetch(TEXTS);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(nouns.threadReady).toBe(false);
      await nouns.prefetch(TEXTS);
      expect(nouns.counts.parsedThere).toBe(0);
      expect(
        nouns
          .standIn()(TEXTS[1] ?? '')
          .nouns()
          .out('array'),
      ).toEqual(direct(TEXTS[1] ?? ''));
      expect(nouns.counts.parsedHere).toBe(1);
    } finally {
      release();
    }
  });

  test('a text too long to keep is parsed each time it is asked for', () => {
    const nouns = new NounPhrases(compromise);
    const long = `${'The quiet harbour of Lisbon at dawn. '.repeat(300)}`;
    const nlp = nouns.standIn();
    expect(nlp(long).nouns().out('array')).toEqual(direct(long));
    expect(nlp(long).nouns().out('array')).toEqual(direct(long));
    expect(nouns.counts).toEqual({ parsedHere: 2, parsedThere: 0, hits: 0 });
  });
});
