/** The logger's redaction: secrets never reach a line, whatever shape they arrive in. */
import { Writable } from 'node:stream';
import winston from 'winston';
import { createLogger, createRedactor } from '../../src/logger';
import { TEST_AUTH_TOKEN, TEST_DB_PASSWORD, TEST_OPENAI_KEY } from '../helpers/secrets';

function capture(debug: boolean): { logger: winston.Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _e, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return {
    logger: createLogger({
      debug,
      secrets: [TEST_AUTH_TOKEN, TEST_OPENAI_KEY, TEST_DB_PASSWORD],
      transports: [new winston.transports.Stream({ stream })],
    }),
    lines,
  };
}

describe('redaction', () => {
  it.each([false, true])('masks configured secrets, credential fields and URL passwords (debug=%s)', (debug) => {
    const { logger, lines } = capture(debug);
    logger.info(`calling with ${TEST_OPENAI_KEY}`, {
      headers: { authorization: `Bearer ${TEST_AUTH_TOKEN}`, 'x-api-key': 'whatever-key', accept: 'json' },
      url: `postgres://app:${TEST_DB_PASSWORD}@db:5432/x`,
      other: `redis://:hunter2hunter2@cache:6379`,
      nested: [{ token: 'abc-def-ghi' }],
      err: new Error(`failed with key ${TEST_OPENAI_KEY}`),
    });
    logger.debug('debug line', { note: `Bearer ${'z'.repeat(20)}` });
    const out = lines.join('\n');
    for (const secret of [
      TEST_OPENAI_KEY,
      TEST_AUTH_TOKEN,
      TEST_DB_PASSWORD,
      'whatever-key',
      'hunter2hunter2',
      'abc-def-ghi',
      'z'.repeat(20),
    ]) {
      expect(out).not.toContain(secret);
    }
    expect(out).toContain('***');
    expect(out).toContain('accept');
  });

  it('writes JSON lines by default and readable lines in debug mode', () => {
    const json = capture(false);
    json.logger.info('hello', { a: 1 });
    expect(JSON.parse(json.lines[0] ?? '')).toMatchObject({ level: 'info', message: 'hello', a: 1 });
    const text = capture(true);
    text.logger.info('hello', { a: 1 });
    expect(text.lines[0]).toMatch(/^\S+ info: hello \{"a":1\}/);
  });

  it('leaves ordinary values alone', () => {
    const redact = createRedactor(['secret-value']);
    expect(redact({ a: 'plain text', n: 3, list: ['x'], ok: true })).toEqual({ a: 'plain text', n: 3, list: ['x'], ok: true });
  });
});
