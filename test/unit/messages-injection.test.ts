import fc from 'fast-check';
import { appendMemoryBlock, messagesPromptText, messagesSessionId } from '../../src/memory/messages-injection';
import { anthropicLabel } from '../../src/routes/proxy';
import { apiOf } from '../../src/http/api';

const BLOCK = 'The following are facts…\n<memories>\n- likes "tea"\n</memories>';

function splice(raw: string): { out: string; parsed: Record<string, unknown> } | undefined {
  const buf = Buffer.from(raw);
  const out = appendMemoryBlock(buf, JSON.parse(raw) as Record<string, unknown>, BLOCK);
  return out && { out: out.toString('utf8'), parsed: JSON.parse(out.toString('utf8')) as Record<string, unknown> };
}

/** Length of the common prefix of two buffers. */
function commonPrefix(a: Buffer, b: Buffer): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

describe('messagesPromptText: the user prompt of an Anthropic request', () => {
  it('takes the prompt after a <system-reminder> block, ignoring a trailing system message', () => {
    const body = {
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: '<system-reminder>\nAs you answer, use this context.\n</system-reminder>' },
            { type: 'text', text: 'Rename the config loader' },
          ],
        },
        { role: 'system', content: [{ type: 'text', text: '<env>cwd: /repo</env>', cache_control: { type: 'ephemeral' } }] },
      ],
    };
    expect(messagesPromptText(body)).toBe('Rename the config loader');
  });

  it('goes through tool_use / tool_result turns to the prompt that started the turn', () => {
    const body = {
      messages: [
        { role: 'user', content: 'first question' },
        { role: 'assistant', content: 'first answer' },
        { role: 'user', content: [{ type: 'text', text: 'Why does the build fail?' }] },
        { role: 'system', content: 'env' },
        {
          role: 'assistant',
          content: [
            { type: 'text', text: 'Let me look.' },
            { type: 'tool_use', id: 't1', name: 'Bash', input: { command: 'npm run build' } },
          ],
        },
        {
          role: 'user',
          content: [
            { type: 'tool_result', tool_use_id: 't1', content: 'error TS2304: Cannot find name' },
            { type: 'text', text: '<system-reminder>todo list is empty</system-reminder>' },
          ],
        },
      ],
    };
    expect(messagesPromptText(body)).toBe('Why does the build fail?');
  });

  it('removes reminders written inside the prompt text and joins several text blocks', () => {
    const body = {
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'line one <system-reminder>hidden</system-reminder>' },
            { type: 'image', source: {} },
            { type: 'text', text: 'line two' },
          ],
        },
      ],
    };
    expect(messagesPromptText(body)).toBe('line one\nline two');
  });

  it('has nothing to search for without human text', () => {
    expect(
      messagesPromptText({
        messages: [{ role: 'user', content: [{ type: 'text', text: '<system-reminder>only context</system-reminder>' }] }],
      }),
    ).toBeUndefined();
    expect(messagesPromptText({ messages: [{ role: 'assistant', content: 'hi' }] })).toBeUndefined();
    expect(messagesPromptText({ messages: 'not a list' })).toBeUndefined();
    expect(messagesPromptText({})).toBeUndefined();
  });
});

describe('appendMemoryBlock: one text block after the last block, every byte before it unchanged', () => {
  it('appends to an array content, keeping the bytes up to the closing bracket', () => {
    const raw =
      '{"system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}],"stream":true}';
    const result = splice(raw);
    expect(result).toBeDefined();
    const close = raw.lastIndexOf(']}]');
    expect(result?.out.slice(0, close)).toBe(raw.slice(0, close));
    expect(result?.parsed).toEqual({
      ...(JSON.parse(raw) as object),
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'hi', cache_control: { type: 'ephemeral' } },
            { type: 'text', text: BLOCK },
          ],
        },
      ],
    });
  });

  it('turns a string content into two text blocks, the original string byte for byte first', () => {
    const raw =
      '{ "messages" : [ {"role":"user","content":"caf\\u00e9 \u{1F600} \\"quoted\\""} , { "content" : "env \\n string" , "role" : "system" } ] }';
    const result = splice(raw);
    const at = raw.indexOf('"env');
    expect(result?.out.slice(0, at)).toBe(raw.slice(0, at));
    expect(result?.out).toContain('[{"type":"text","text":"env \\n string"},{"type":"text","text":');
    const messages = result?.parsed['messages'] as Array<Record<string, unknown>>;
    expect(messages[1]).toEqual({
      role: 'system',
      content: [
        { type: 'text', text: 'env \n string' },
        { type: 'text', text: BLOCK },
      ],
    });
    expect(messages[0]).toEqual({ role: 'user', content: 'café \u{1F600} "quoted"' });
  });

  it('fills an empty content array without a leading comma', () => {
    expect(splice('{"messages":[{"role":"user","content":[ ]}]}')?.parsed['messages']).toEqual([
      { role: 'user', content: [{ type: 'text', text: BLOCK }] },
    ]);
  });

  it('follows JSON.parse where a key is escaped or repeated', () => {
    const raw =
      '{"messages":[{"role":"user","content":"old"}],"messa\\u0067es":[{"role":"user","content":["x"],"content":[{"type":"text","text":"new"}]}]}';
    const result = splice(raw);
    expect(result?.parsed['messages']).toEqual([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'new' },
          { type: 'text', text: BLOCK },
        ],
      },
    ]);
  });

  it('leaves an assistant prefill, or a request without messages, alone', () => {
    expect(splice('{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"The answer is"}]}')).toBeUndefined();
    expect(splice('{"messages":[]}')).toBeUndefined();
    expect(splice('{"prompt":"x"}')).toBeUndefined();
    expect(splice('{"messages":[{"role":"user","content":null}]}')).toBeUndefined();
  });

  it('on any body: the result parses to the body with the block appended, and only bytes after the insertion point differ', () => {
    const text = fc.string({ unit: 'binary', maxLength: 12 });
    const block = fc.oneof(
      fc.record({ type: fc.constant('text'), text }),
      fc.record({ type: fc.constant('text'), text, cache_control: fc.constant({ type: 'ephemeral' }) }),
      fc.record({ type: fc.constant('tool_result'), tool_use_id: fc.string({ maxLength: 5 }), content: text }),
    );
    const message = fc.record({
      role: fc.constantFrom('user', 'system', 'assistant'),
      content: fc.oneof(text, fc.array(block, { maxLength: 3 })),
    });
    const body = fc.record({
      model: fc.string({ maxLength: 5 }),
      messages: fc.array(message, { minLength: 1, maxLength: 4 }),
      n: fc.double({ noNaN: true, noDefaultInfinity: true }),
    });
    fc.assert(
      fc.property(body, fc.integer({ min: 0, max: 2 }), (value, indent) => {
        const raw = Buffer.from(JSON.stringify(value, null, indent));
        const out = appendMemoryBlock(raw, JSON.parse(raw.toString('utf8')) as Record<string, unknown>, BLOCK);
        const last = value.messages[value.messages.length - 1];
        if (last?.role === 'assistant') return out === undefined;
        if (!out) return false;
        const content = typeof last?.content === 'string' ? [{ type: 'text', text: last.content }] : [...(last?.content ?? [])];
        const expected = {
          ...value,
          messages: [...value.messages.slice(0, -1), { ...last, content: [...content, { type: 'text', text: BLOCK }] }],
        };
        expect(JSON.parse(out.toString('utf8'))).toEqual(JSON.parse(JSON.stringify(expected)));
        // Nothing before the last message changed: where it starts, found with a stand-in for it.
        const standIn = JSON.stringify({ ...value, messages: [...value.messages.slice(0, -1), '__LAST__'] }, null, indent);
        const lastStart = Buffer.byteLength(standIn.slice(0, standIn.indexOf('"__LAST__"')));
        expect(commonPrefix(raw, out)).toBeGreaterThanOrEqual(lastStart);
        return true;
      }),
      { numRuns: 300 },
    );
  });
});

describe('messagesSessionId', () => {
  it('prefers the Claude Code session header, else the session in metadata.user_id', () => {
    const metadata = { user_id: JSON.stringify({ device_id: 'd1', account_uuid: '', session_id: 'sess-from-body' }) };
    expect(messagesSessionId({ 'x-claude-code-session-id': 'sess-header' }, { metadata })).toBe('sess-header');
    expect(messagesSessionId({}, { metadata })).toBe('sess-from-body');
  });

  it('ignores ids that are not a plain printable token', () => {
    expect(messagesSessionId({ 'x-claude-code-session-id': 'a b' }, {})).toBeUndefined();
    expect(messagesSessionId({}, { metadata: { user_id: 'user-42' } })).toBeUndefined();
    expect(messagesSessionId({}, { metadata: { user_id: '{not json' } })).toBeUndefined();
    expect(messagesSessionId({}, { metadata: { user_id: JSON.stringify({ session_id: 'x'.repeat(300) }) } })).toBeUndefined();
  });
});

describe('telling Anthropic requests from OpenAI ones', () => {
  it('routes Anthropic paths by path and shared paths by the anthropic-version header', () => {
    expect(apiOf('/v1/messages', {})).toBe('anthropic');
    expect(apiOf('/v1/messages/count_tokens', {})).toBe('anthropic');
    expect(apiOf('/v1/models', {})).toBe('openai');
    expect(apiOf('/v1/models', { 'anthropic-version': '2023-06-01' })).toBe('anthropic');
    expect(apiOf('/v1/chat/completions', {})).toBe('openai');
    expect(apiOf('/v1/messagesX', {})).toBe('openai');
  });

  it('labels Anthropic routes from a fixed set', () => {
    expect(anthropicLabel('/v1/messages')).toBe('/v1/messages');
    expect(anthropicLabel('/v1/messages/count_tokens')).toBe('/v1/messages/count_tokens');
    expect(anthropicLabel('/v1/messages/batches/abc')).toBe('/v1/messages/batches');
    expect(anthropicLabel('/v1/messages/made-up')).toBe('/v1/messages/other');
    expect(anthropicLabel('/v1/models/claude')).toBe('/v1/models');
    expect(anthropicLabel('/v1/random-thing')).toBe('/v1/other');
  });
});
