/**
 * `chain`, the middleware runner both the Express app and the `/v1/*` hot path use: handlers run
 * in order, an error (passed, thrown or rejected) skips the rest, and a handler's `next` counts once
 * (a later error goes to the late-error reporter).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { chain, chainReporting, pathOf, type Handler, type Next } from '../../src/http/pipeline';

const req = (url?: string): IncomingMessage => ({ url }) as IncomingMessage;
const res = {} as ServerResponse;

/** Runs `handler` and resolves with what reached the final `next`, each call recorded. */
function run(handler: Handler): { calls: unknown[][]; done: Promise<void> } {
  const calls: unknown[][] = [];
  let finish: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (finish = resolve));
  handler(req('/'), res, (...args: unknown[]) => {
    calls.push(args);
    finish();
  });
  return { calls, done };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('chain', () => {
  it('runs the handlers in order, each once, then calls next without an error', async () => {
    const seen: string[] = [];
    const step =
      (name: string): Handler =>
      (_req, _res, next) => {
        seen.push(name);
        next();
      };
    const { calls, done } = run(chain(step('a'), step('b'), step('c')));
    await done;
    expect(seen).toEqual(['a', 'b', 'c']);
    expect(calls).toEqual([[]]);
  });

  it('waits for a handler that calls next later', async () => {
    const seen: string[] = [];
    const { calls, done } = run(
      chain(
        (_req, _res, next) =>
          void setTimeout(() => {
            seen.push('slow');
            next();
          }, 10),
        (_req, _res, next) => {
          seen.push('after');
          next();
        },
      ),
    );
    expect(seen).toEqual([]);
    await done;
    expect(seen).toEqual(['slow', 'after']);
    expect(calls).toHaveLength(1);
  });

  it('stops at a handler that answers without calling next', async () => {
    const later = jest.fn();
    const { calls } = run(chain((_req, _res, _next) => undefined, later));
    await tick();
    expect(later).not.toHaveBeenCalled();
    expect(calls).toEqual([]);
  });

  it.each<[string, Handler]>([
    ['given to its next', (_req, _res, next) => next(new Error('boom'))],
    [
      'thrown',
      () => {
        throw new Error('boom');
      },
    ],
    [
      'from a rejected promise',
      async () => {
        throw new Error('boom');
      },
    ],
  ])('hands an error %s to the chain’s next and skips the rest', async (_how, failing) => {
    const later = jest.fn();
    const { calls, done } = run(chain(failing, later));
    await done;
    expect(later).not.toHaveBeenCalled();
    expect(calls).toEqual([[new Error('boom')]]);
  });

  it('treats next(null) as success, as Express does', async () => {
    const later = jest.fn((_req: IncomingMessage, _res: ServerResponse, next: Next) => next());
    const { calls, done } = run(chain((_req, _res, next) => next(null), later));
    await done;
    expect(later).toHaveBeenCalledTimes(1);
    expect(calls).toEqual([[]]);
  });

  it('ignores a second call of the same handler’s next: the rest of the chain runs once', async () => {
    const later = jest.fn((_req: IncomingMessage, _res: ServerResponse, next: Next) => next());
    const { calls, done } = run(
      chain((_req, _res, next) => {
        next();
        next();
      }, later),
    );
    await done;
    await tick();
    expect(later).toHaveBeenCalledTimes(1);
    expect(calls).toEqual([[]]);
  });

  it('ignores an error after the handler already called next (no second answer to one request)', async () => {
    const later = jest.fn((_req: IncomingMessage, _res: ServerResponse, next: Next) => next());
    const { calls, done } = run(
      chain(async (_req, _res, next) => {
        next();
        throw new Error('too late');
      }, later),
    );
    await done;
    await tick();
    expect(later).toHaveBeenCalledTimes(1);
    expect(calls).toEqual([[]]);
  });

  it('hands an error raised after next to the late-error reporter, thrown or rejected, and runs the rest once', async () => {
    const reported: Array<[string, string | undefined]> = [];
    const report = (err: unknown, r: IncomingMessage): void => {
      reported.push([(err as Error).message, r.url]);
    };
    const later = jest.fn((_req: IncomingMessage, _res: ServerResponse, next: Next) => next());
    const { calls, done } = run(
      chainReporting(
        report,
        (_req, _res, next) => {
          next();
          throw new Error('thrown late');
        },
        async (_req, _res, next) => {
          next();
          throw new Error('rejected late');
        },
        (_req, _res, next) => {
          next();
          next(new Error('passed late'));
        },
        later,
      ),
    );
    await done;
    await tick();
    expect(later).toHaveBeenCalledTimes(1);
    expect(calls).toEqual([[]]);
    expect(reported.sort()).toEqual([
      ['passed late', '/'],
      ['rejected late', '/'],
      ['thrown late', '/'],
    ]);
  });

  it('calls next at once for an empty chain', () => {
    const { calls } = run(chain());
    expect(calls).toEqual([[]]);
  });
});

describe('pathOf', () => {
  it('is the request target without its query', () => {
    expect(pathOf(req('/v1/chat/completions?x=1&y=2'))).toBe('/v1/chat/completions');
    expect(pathOf(req('/health'))).toBe('/health');
    expect(pathOf(req('/?'))).toBe('/');
    expect(pathOf(req(undefined))).toBe('/');
  });
});
