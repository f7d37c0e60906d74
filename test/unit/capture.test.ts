/**
 * Reply capture: the assistant's text is assembled from what flows to the client, chunked at any
 * byte, and only a complete 2xx reply yields a result. Sample bodies come from the fake upstream
 * (real wire bytes); hand-written ones cover SSE framing corners.
 */
import * as http from 'node:http';
import { once } from 'node:events';
import { PassThrough, Writable } from 'node:stream';
import zlib from 'node:zlib';
import { createReplyCapture, type CaptureOptions, type CapturedReply, type ReplyKind } from '../../src/proxy/capture';
import { startFakeUpstream, type FakeUpstream } from '../fakes/openai-upstream';
import { rawPost as rawPostTo, type RawResponse } from '../helpers/raw-http';

const UNICODE_REPLY = 'Grüße aus Köln 😀 — naïve 日本語 text';

let fake: FakeUpstream;

beforeAll(async () => {
  fake = await startFakeUpstream({ wordsPerChunk: 1 });
});

afterEach(() => fake.reset());

afterAll(async () => {
  await fake.close();
});

/** POSTs to the fake and returns the raw response bytes. */
const rawPost = (path: string, body: unknown): Promise<RawResponse> => rawPostTo(`http://127.0.0.1:${fake.port}${path}`, body);

/** An IncomingMessage stand-in: a PassThrough with a status and headers. */
function fakeResponse(status: number, headers: http.IncomingHttpHeaders): PassThrough & http.IncomingMessage {
  return Object.assign(new PassThrough(), { statusCode: status, headers }) as unknown as PassThrough & http.IncomingMessage;
}

/** Feeds `chunks` through a capture (with a consumer piped, as the proxy does) and returns its result. */
async function feed(
  kind: ReplyKind,
  chunks: Buffer[],
  opts: { status?: number; contentType?: string; encoding?: string; cut?: boolean; capture?: CaptureOptions } = {},
): Promise<CapturedReply | undefined> {
  const headers: http.IncomingHttpHeaders = { 'content-type': opts.contentType ?? 'text/event-stream; charset=utf-8' };
  if (opts.encoding) headers['content-encoding'] = opts.encoding;
  const res = fakeResponse(opts.status ?? 200, headers);
  const capture = createReplyCapture(kind, res, opts.capture);
  res.pipe(new Writable({ write: (_c, _e, cb) => cb() }));
  for (const chunk of chunks) res.write(chunk);
  if (opts.cut) {
    await new Promise((resolve) => setImmediate(resolve));
    res.destroy();
    await once(res, 'close');
  } else {
    const ended = once(res, 'end');
    res.end();
    await ended;
  }
  return capture.result();
}

function splitAt(buf: Buffer, i: number): Buffer[] {
  return [buf.subarray(0, i), buf.subarray(i)];
}

function bytewise(buf: Buffer): Buffer[] {
  return Array.from({ length: buf.length }, (_, i) => buf.subarray(i, i + 1));
}

const sse = (text: string): Buffer => Buffer.from(text, 'utf8');

describe('chat completions, streamed', () => {
  it('assembles the reply from a stream split at every byte position (UTF-8 characters included)', async () => {
    fake.setBehaviour({ reply: UNICODE_REPLY });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    expect(raw.status).toBe(200);
    const expected: CapturedReply = { text: UNICODE_REPLY, toolCallsOnly: false, model: 'gpt-4o-mini' };
    expect(await feed('chat', [raw.body])).toEqual(expected);
    expect(await feed('chat', bytewise(raw.body))).toEqual(expected);
    for (let i = 1; i < raw.body.length; i++) {
      const got = await feed('chat', splitAt(raw.body, i));
      if (got?.text !== UNICODE_REPLY) throw new Error(`split at byte ${i}: ${JSON.stringify(got)}`);
    }
  });

  it('keeps only choice 0 when n > 1', async () => {
    fake.setBehaviour({ reply: (ctx) => (ctx.choiceIndex === 0 ? 'first choice words here' : 'second choice other words') });
    const raw = await rawPost('/v1/chat/completions', {
      model: 'gpt-4o-mini',
      stream: true,
      n: 2,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect((await feed('chat', [raw.body]))?.text).toBe('first choice words here');
  });

  it('reports a tool-calls-only reply', async () => {
    fake.setBehaviour({ toolCall: 'auto' });
    const tools = [
      {
        type: 'function',
        function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
      },
    ];
    const raw = await rawPost('/v1/chat/completions', {
      model: 'gpt-4o-mini',
      stream: true,
      tools,
      messages: [{ role: 'user', content: 'weather?' }],
    });
    expect(await feed('chat', [raw.body])).toEqual({ text: '', toolCallsOnly: true, model: 'gpt-4o-mini' });
  });

  it('gives undefined for a truncated stream (no [DONE], no finish, or cut before the end)', async () => {
    fake.setBehaviour({ reply: 'one two three four five' });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const text = raw.body.toString('utf8');
    const withoutDone = Buffer.from(text.slice(0, text.indexOf('data: [DONE]')));
    const beforeFinish = Buffer.from(text.slice(0, text.indexOf('"finish_reason":"stop"')).replace(/data: [^\n]*$/, ''));
    expect(await feed('chat', [beforeFinish])).toBeUndefined();
    // finish_reason seen, but the connection was cut rather than ended.
    expect(await feed('chat', [withoutDone], { cut: true })).toBeUndefined();
    // Even with [DONE] in the bytes, a cut before the blank line ending its event is not complete.
    expect(await feed('chat', [Buffer.from(text.trimEnd())], { cut: true })).toBeUndefined();
  });

  it('accepts finish_reason followed by a clean end when a server omits [DONE]', async () => {
    const body = sse(
      'data: {"model":"m","choices":[{"index":0,"delta":{"content":"hel"}}]}\n\n' +
        'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}\n\n' +
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    );
    expect(await feed('chat', [body])).toEqual({ text: 'hello', toolCallsOnly: false, model: 'm' });
  });

  it('handles CRLF and CR line endings, comments, event names and multi-line data', async () => {
    const crlf = sse(
      ': keep-alive comment\r\n\r\n' +
        'event: message\r\ndata: {"model":"m","choices":[{"index":0,\r\ndata: "delta":{"content":"a\\nb"}}]}\r\n\r\n' +
        ':another\r\ndata:{"choices":[{"index":0,"delta":{"content":" c"}}]}\r\n\r\n' +
        'data: [DONE]\r\n\r\n',
    );
    const expected = { text: 'a\nb c', toolCallsOnly: false, model: 'm' };
    expect(await feed('chat', [crlf])).toEqual(expected);
    for (let i = 1; i < crlf.length; i++) expect(await feed('chat', splitAt(crlf, i))).toEqual(expected);
    const cr = Buffer.from(crlf.toString('utf8').replace(/\r\n/g, '\r'));
    expect(await feed('chat', bytewise(cr))).toEqual(expected);
  });

  it('gives undefined for malformed SSE, an error event, or an unreadable stream', async () => {
    fake.setNext({ kind: 'malformed-sse', afterChunks: 2 });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    expect(await feed('chat', [raw.body])).toBeUndefined();
    const garbageThenDone = sse('data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: {not json\n\ndata: [DONE]\n\n');
    expect(await feed('chat', [garbageThenDone])).toBeUndefined();
    const errorEvent = sse(
      'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: {"error":{"message":"boom"}}\n\ndata: [DONE]\n\n',
    );
    expect(await feed('chat', [errorEvent])).toBeUndefined();
  });

  it('gives undefined for a non-2xx status or another content type', async () => {
    const ok = sse('data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n');
    expect(await feed('chat', [ok], { status: 500 })).toBeUndefined();
    expect(await feed('chat', [ok], { status: 429 })).toBeUndefined();
    expect(await feed('chat', [ok], { contentType: 'text/plain' })).toBeUndefined();
  });

  it('caps the captured text without splitting a character, and still reports the reply', async () => {
    const piece = JSON.stringify({ choices: [{ index: 0, delta: { content: 'ab😀' } }] });
    const body = sse(`${`data: ${piece}\n\n`.repeat(100)}data: [DONE]\n\n`);
    const got = await feed('chat', [body], { capture: { maxTextChars: 7 } });
    expect(got?.text).toBe('ab😀ab');
  });

  it('gives up on a line longer than the body limit', async () => {
    const body = sse(`data: {"choices":[{"index":0,"delta":{"content":"${'x'.repeat(5000)}"}}]}\n\ndata: [DONE]\n\n`);
    expect(await feed('chat', [body], { capture: { maxBodyBytes: 1000 } })).toBeUndefined();
    expect((await feed('chat', [body], { capture: { maxBodyBytes: 10_000 } }))?.text).toHaveLength(5000);
  });

  it('reads a gzip-compressed stream', async () => {
    fake.setBehaviour({ reply: UNICODE_REPLY });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const gz = zlib.gzipSync(raw.body);
    expect((await feed('chat', bytewise(gz), { encoding: 'gzip' }))?.text).toBe(UNICODE_REPLY);
    expect(await feed('chat', [gz.subarray(0, gz.length - 5)], { encoding: 'gzip' })).toBeUndefined();
  });
});

describe('chat completions, JSON', () => {
  it('takes choices[0].message.content, split at every byte', async () => {
    fake.setBehaviour({ reply: UNICODE_REPLY });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini', n: 2, messages: [{ role: 'user', content: 'hi' }] });
    const expected = { text: UNICODE_REPLY, toolCallsOnly: false, model: 'gpt-4o-mini' };
    for (let i = 1; i < raw.body.length; i += 7)
      expect(await feed('chat', splitAt(raw.body, i), { contentType: 'application/json' })).toEqual(expected);
  });

  it('reads content parts, tool calls, and refuses truncated or error bodies', async () => {
    const json = (v: unknown): Buffer[] => [Buffer.from(JSON.stringify(v))];
    const parts = {
      model: 'm',
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: [
              { type: 'text', text: 'a' },
              { type: 'text', text: 'b' },
            ],
          },
        },
      ],
    };
    expect(await feed('chat', json(parts), { contentType: 'application/json' })).toEqual({ text: 'ab', toolCallsOnly: false, model: 'm' });
    const tools = {
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: null,
            tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }],
          },
        },
      ],
    };
    expect(await feed('chat', json(tools), { contentType: 'application/json' })).toEqual({ text: '', toolCallsOnly: true });
    const whole = Buffer.from(JSON.stringify(parts));
    expect(await feed('chat', [whole.subarray(0, whole.length - 3)], { contentType: 'application/json' })).toBeUndefined();
    expect(await feed('chat', [whole], { contentType: 'application/json', cut: true })).toBeUndefined();
    expect(await feed('chat', json({ error: { message: 'x' } }), { contentType: 'application/json' })).toBeUndefined();
    expect(await feed('chat', json({ choices: [] }), { contentType: 'application/json' })).toBeUndefined();
    expect(await feed('chat', [Buffer.from('not json')], { contentType: 'application/json' })).toBeUndefined();
  });

  it('reads a gzip-compressed JSON body', async () => {
    const body = zlib.gzipSync(Buffer.from(JSON.stringify({ model: 'm', choices: [{ index: 0, message: { content: 'zipped' } }] })));
    expect(await feed('chat', [body], { contentType: 'application/json', encoding: 'gzip' })).toEqual({
      text: 'zipped',
      toolCallsOnly: false,
      model: 'm',
    });
  });
});

describe('Responses API', () => {
  it('assembles output_text deltas of a stream split at every byte, complete at response.completed', async () => {
    fake.setBehaviour({ reply: UNICODE_REPLY });
    const raw = await rawPost('/v1/responses', { model: 'gpt-4o-mini', stream: true, input: 'hi' });
    expect(raw.status).toBe(200);
    const expected = { text: UNICODE_REPLY, toolCallsOnly: false, model: 'gpt-4o-mini' };
    expect(await feed('responses', bytewise(raw.body))).toEqual(expected);
    for (let i = 1; i < raw.body.length; i += 3) {
      const got = await feed('responses', splitAt(raw.body, i));
      if (got?.text !== UNICODE_REPLY) throw new Error(`split at byte ${i}: ${JSON.stringify(got)}`);
    }
    const text = raw.body.toString('utf8');
    expect(await feed('responses', [Buffer.from(text.slice(0, text.indexOf('event: response.completed')))])).toBeUndefined();
  });

  it('gives undefined for response.incomplete, response.failed or an error event', async () => {
    fake.setBehaviour({ reply: 'one two three four' });
    const raw = await rawPost('/v1/responses', { model: 'gpt-4o-mini', stream: true, input: 'hi', max_output_tokens: 2 });
    expect(raw.body.toString('utf8')).toContain('response.incomplete');
    expect(await feed('responses', [raw.body])).toBeUndefined();
    expect(await feed('responses', [sse('event: error\ndata: {"type":"error","message":"x"}\n\n')])).toBeUndefined();
  });

  it('reports a function-call-only stream', async () => {
    fake.setBehaviour({ toolCall: 'auto' });
    const tools = [{ type: 'function', name: 'get_weather', parameters: { type: 'object', properties: {}, required: [] } }];
    const raw = await rawPost('/v1/responses', { model: 'gpt-4o-mini', stream: true, input: 'weather?', tools });
    expect(await feed('responses', [raw.body])).toEqual({ text: '', toolCallsOnly: true, model: 'gpt-4o-mini' });
  });

  it('reads a JSON response (output items, or output_text)', async () => {
    fake.setBehaviour({ reply: UNICODE_REPLY });
    const raw = await rawPost('/v1/responses', { model: 'gpt-4o-mini', input: 'hi' });
    expect(await feed('responses', [raw.body], { contentType: 'application/json' })).toEqual({
      text: UNICODE_REPLY,
      toolCallsOnly: false,
      model: 'gpt-4o-mini',
    });
    const convenience = Buffer.from(JSON.stringify({ status: 'completed', output_text: 'short', output: [] }));
    expect(await feed('responses', [convenience], { contentType: 'application/json' })).toEqual({ text: 'short', toolCallsOnly: false });
    const queued = Buffer.from(JSON.stringify({ status: 'queued', output: [] }));
    expect(await feed('responses', [queued], { contentType: 'application/json' })).toBeUndefined();
  });
});

describe('on a real upstream response', () => {
  /** Sends a request, pipes the real IncomingMessage into a sink while capturing, as the proxy does. */
  function liveCapture(kind: ReplyKind, path: string, body: unknown): Promise<{ reply: CapturedReply | undefined; received: string }> {
    return new Promise((resolve, reject) => {
      const payload = JSON.stringify(body);
      let responded = false;
      const req = http.request(
        `http://127.0.0.1:${fake.port}${path}`,
        { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
        (res) => {
          responded = true;
          const capture = createReplyCapture(kind, res);
          const chunks: Buffer[] = [];
          const sink = new Writable({
            write: (c: Buffer, _e, cb) => {
              chunks.push(c);
              cb();
            },
          });
          res.pipe(sink);
          const done = (): void => resolve({ reply: capture.result(), received: Buffer.concat(chunks).toString('utf8') });
          sink.on('finish', done);
          res.on('error', done);
          res.on('aborted', done);
        },
      );
      // A reset after the response started surfaces on the response (handled above).
      req.on('error', (err) => {
        if (!responded) reject(err);
      });
      req.end(payload);
    });
  }

  it('captures while the client still receives every byte', async () => {
    fake.setBehaviour({ reply: UNICODE_REPLY });
    const { reply, received } = await liveCapture('chat', '/v1/chat/completions', {
      model: 'gpt-4o-mini',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(reply?.text).toBe(UNICODE_REPLY);
    expect(received).toContain('data: [DONE]');
  });

  it('gives undefined when the upstream resets mid-stream', async () => {
    fake.setBehaviour({ reply: 'one two three four five six' });
    fake.setNext({ kind: 'reset', afterChunks: 3 });
    const { reply } = await liveCapture('chat', '/v1/chat/completions', {
      model: 'gpt-4o-mini',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(reply).toBeUndefined();
  });
});

describe('Anthropic Messages replies', () => {
  const event = (name: string, data: unknown): string => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
  /** A Messages stream with a thinking block, two text blocks around a tool_use, and `stopReason`. */
  const stream = (stopReason: string, extra: string[] = []): Buffer =>
    Buffer.from(
      [
        event('message_start', {
          type: 'message_start',
          message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-x', content: [], stop_reason: null, usage: {} },
        }),
        event('ping', { type: 'ping' }),
        event('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'thinking', thinking: '' } }),
        event('content_block_delta', {
          type: 'content_block_delta',
          index: 0,
          delta: { type: 'thinking_delta', thinking: 'secret reasoning' },
        }),
        event('content_block_stop', { type: 'content_block_stop', index: 0 }),
        event('content_block_start', { type: 'content_block_start', index: 1, content_block: { type: 'text', text: '' } }),
        event('content_block_delta', { type: 'content_block_delta', index: 1, delta: { type: 'text_delta', text: 'Grüße ' } }),
        event('content_block_delta', { type: 'content_block_delta', index: 1, delta: { type: 'text_delta', text: '😀 done' } }),
        event('content_block_stop', { type: 'content_block_stop', index: 1 }),
        event('content_block_start', {
          type: 'content_block_start',
          index: 2,
          content_block: { type: 'tool_use', id: 't', name: 'Bash', input: {} },
        }),
        event('content_block_delta', {
          type: 'content_block_delta',
          index: 2,
          delta: { type: 'input_json_delta', partial_json: '{"command":"ls"}' },
        }),
        event('content_block_stop', { type: 'content_block_stop', index: 2 }),
        event('content_block_start', { type: 'content_block_start', index: 3, content_block: { type: 'text', text: '' } }),
        event('content_block_delta', { type: 'content_block_delta', index: 3, delta: { type: 'text_delta', text: 'Second block.' } }),
        event('content_block_stop', { type: 'content_block_stop', index: 3 }),
        ...extra,
        event('message_delta', {
          type: 'message_delta',
          delta: { stop_reason: stopReason, stop_sequence: null },
          usage: { output_tokens: 9 },
        }),
        event('message_stop', { type: 'message_stop' }),
      ].join(''),
    );

  it('keeps the text blocks only (no thinking, no tool input), with the model and stop_reason, at any chunking', async () => {
    const body = stream('end_turn');
    for (const at of [1, 17, Math.floor(body.length / 2), body.length - 3]) {
      const reply = await feed('messages', splitAt(body, at));
      expect(reply).toEqual({ text: 'Grüße 😀 done\n\nSecond block.', toolCallsOnly: false, model: 'claude-x', stopReason: 'end_turn' });
    }
    expect((await feed('messages', [stream('tool_use')]))?.stopReason).toBe('tool_use');
  });

  it('gives nothing for an error event, a stream without message_stop, or a cut connection', async () => {
    const withError = event('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } });
    expect(await feed('messages', [stream('end_turn', [withError])])).toBeUndefined();
    const body = stream('end_turn');
    const withoutStop = body.subarray(0, body.indexOf('event: message_stop'));
    expect(await feed('messages', [withoutStop])).toBeUndefined();
    expect(await feed('messages', [body.subarray(0, 300)], { cut: true })).toBeUndefined();
  });

  it('reads a whole message object, and refuses an error object', async () => {
    const message = {
      id: 'msg',
      type: 'message',
      role: 'assistant',
      model: 'claude-y',
      content: [
        { type: 'thinking', thinking: 'no' },
        { type: 'text', text: 'Hello' },
      ],
      stop_reason: 'end_turn',
    };
    expect(await feed('messages', [Buffer.from(JSON.stringify(message))], { contentType: 'application/json' })).toEqual({
      text: 'Hello',
      toolCallsOnly: false,
      model: 'claude-y',
      stopReason: 'end_turn',
    });
    const toolOnly = { ...message, content: [{ type: 'tool_use', id: 't', name: 'x', input: {} }], stop_reason: 'tool_use' };
    expect((await feed('messages', [Buffer.from(JSON.stringify(toolOnly))], { contentType: 'application/json' }))?.toolCallsOnly).toBe(
      true,
    );
    const error = { type: 'error', error: { type: 'api_error', message: 'x' } };
    expect(await feed('messages', [Buffer.from(JSON.stringify(error))], { contentType: 'application/json' })).toBeUndefined();
  });
});
