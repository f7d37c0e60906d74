/**
 * Reading the assistant's reply out of each API's answers: whole JSON bodies and the SSE events of
 * chat completions, Responses and Anthropic Messages, into the reply text (bounded) and what the
 * capture needs to judge the reply complete.
 */

export type ReplyKind = 'chat' | 'responses' | 'messages';

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Reply text accumulated up to a limit, cut on a code point boundary. */
export class TextSink {
  private parts: string[] = [];
  private length = 0;
  constructor(private readonly max: number) {}

  add(piece: string): void {
    if (piece === '' || this.length >= this.max) return;
    if (this.length + piece.length <= this.max) {
      this.parts.push(piece);
      this.length += piece.length;
      return;
    }
    let end = this.max - this.length;
    const code = piece.charCodeAt(end - 1);
    if (code >= 0xd800 && code <= 0xdbff) end--;
    this.parts.push(piece.slice(0, end));
    // Cut once: nothing after the cut may be appended, or the text would skip a piece.
    this.length = this.max;
  }

  get text(): string {
    return this.parts.join('');
  }
}

/** What a parser knows once it has seen the body. */
export interface ParseState {
  failed: boolean;
  complete: boolean;
  toolCalls: boolean;
  model: string | undefined;
  stopReason: string | undefined;
}

/** Text of an assistant content: a string, or the text of its text parts. */
function partsText(content: unknown, types: readonly string[]): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  let out = '';
  for (const part of content) {
    if (isObject(part) && typeof part['type'] === 'string' && types.includes(part['type']) && typeof part['text'] === 'string')
      out += part['text'];
  }
  return out;
}

function hasItems(value: unknown): boolean {
  return Array.isArray(value) && value.length > 0;
}

/** Choice 0 of a chat `choices` array: the one with `index: 0`, else the first. */
function firstChoice(choices: unknown[]): Json | undefined {
  const indexed = choices.find((c) => isObject(c) && c['index'] === 0);
  if (isObject(indexed)) return indexed;
  const first: unknown = choices[0];
  return isObject(first) && (first['index'] === undefined || first['index'] === 0) ? first : undefined;
}

/** Output items that are calls (function_call, custom_tool_call, computer_call, mcp_call, …). */
function isCallItem(item: unknown): boolean {
  return isObject(item) && typeof item['type'] === 'string' && item['type'].endsWith('_call');
}

/** Text and calls of a Responses `output` array. */
function responsesOutput(response: Json, sink: TextSink): { text: boolean; calls: boolean } {
  const output = response['output'];
  let calls = false;
  let text = false;
  if (Array.isArray(output)) {
    for (const item of output) {
      if (isCallItem(item)) calls = true;
      if (isObject(item) && item['type'] === 'message') {
        const t = partsText(item['content'], ['output_text']);
        if (t !== '') {
          sink.add(t);
          text = true;
        }
      }
    }
  }
  if (!text && typeof response['output_text'] === 'string' && response['output_text'] !== '') {
    sink.add(response['output_text']);
    text = true;
  }
  return { text, calls };
}

/** Parses a whole chat completion or Responses object into `state` and `sink`. */
export function parseJsonBody(kind: ReplyKind, body: string, state: ParseState, sink: TextSink): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    state.failed = true;
    return;
  }
  if (!isObject(parsed) || (parsed['error'] !== undefined && parsed['error'] !== null)) {
    state.failed = true;
    return;
  }
  if (typeof parsed['model'] === 'string') state.model = parsed['model'];
  if (kind === 'messages') {
    if (parsed['type'] !== 'message' || !Array.isArray(parsed['content'])) {
      state.failed = true;
      return;
    }
    for (const block of parsed['content']) {
      if (!isObject(block)) continue;
      if (block['type'] === 'text' && typeof block['text'] === 'string') addTextBlock(sink, block['text']);
      else if (block['type'] === 'tool_use' || block['type'] === 'server_tool_use') state.toolCalls = true;
    }
    if (typeof parsed['stop_reason'] === 'string') state.stopReason = parsed['stop_reason'];
  } else if (kind === 'chat') {
    const choices = parsed['choices'];
    const choice = Array.isArray(choices) ? firstChoice(choices) : undefined;
    const message = choice?.['message'];
    if (!isObject(message)) {
      state.failed = true;
      return;
    }
    sink.add(partsText(message['content'], ['text', 'output_text']));
    state.toolCalls = hasItems(message['tool_calls']) || isObject(message['function_call']);
  } else {
    const status = parsed['status'];
    if (status !== undefined && status !== 'completed') {
      state.failed = true;
      return;
    }
    state.toolCalls = responsesOutput(parsed, sink).calls;
  }
  state.complete = true;
}

/** Handles one chat SSE event. */
export function chatEvent(data: string, state: ParseState, sink: TextSink, finish: { choice0: boolean; done: boolean }): void {
  if (finish.done) return;
  if (data.trim() === '[DONE]') {
    finish.done = true;
    return;
  }
  let chunk: unknown;
  try {
    chunk = JSON.parse(data);
  } catch {
    state.failed = true;
    return;
  }
  if (!isObject(chunk) || (chunk['error'] !== undefined && chunk['error'] !== null)) {
    state.failed = true;
    return;
  }
  if (state.model === undefined && typeof chunk['model'] === 'string') state.model = chunk['model'];
  const choices = chunk['choices'];
  if (!Array.isArray(choices)) return;
  for (const choice of choices) {
    // Only choice 0: with n > 1 the first answer is the one remembered.
    if (!isObject(choice) || (choice['index'] !== 0 && !(choice['index'] === undefined && choices.length === 1))) continue;
    const delta = choice['delta'];
    if (isObject(delta)) {
      if (typeof delta['content'] === 'string') sink.add(delta['content']);
      else if (Array.isArray(delta['content'])) sink.add(partsText(delta['content'], ['text', 'output_text']));
      if (hasItems(delta['tool_calls']) || isObject(delta['function_call'])) state.toolCalls = true;
    }
    if (typeof choice['finish_reason'] === 'string' && choice['finish_reason'] !== '') finish.choice0 = true;
  }
}

/** An SSE event's JSON object; anything else fails the capture (undefined). */
function eventPayload(data: string, state: ParseState): Json | undefined {
  let payload: unknown;
  try {
    payload = JSON.parse(data);
  } catch {
    payload = undefined;
  }
  if (isObject(payload)) return payload;
  state.failed = true;
  return undefined;
}

/** Handles one Responses SSE event (its `type` field, else the `event:` name). */
export function responsesEvent(eventName: string, data: string, state: ParseState, sink: TextSink, seenDelta: { text: boolean }): void {
  if (state.complete) return;
  const payload = eventPayload(data, state);
  if (!payload) return;
  const type = typeof payload['type'] === 'string' ? payload['type'] : eventName;
  switch (type) {
    case 'response.output_text.delta':
      if (typeof payload['delta'] === 'string') {
        sink.add(payload['delta']);
        if (payload['delta'] !== '') seenDelta.text = true;
      }
      return;
    case 'response.output_item.added':
    case 'response.output_item.done':
      if (isCallItem(payload['item'])) state.toolCalls = true;
      return;
    case 'response.completed': {
      const response = payload['response'];
      if (isObject(response)) {
        if (typeof response['model'] === 'string') state.model = response['model'];
        // Servers that send no deltas still put the text in the final object.
        const out = responsesOutput(response, seenDelta.text ? new TextSink(0) : sink);
        if (out.calls) state.toolCalls = true;
      }
      state.complete = true;
      return;
    }
    case 'response.created':
    case 'response.in_progress': {
      const response = payload['response'];
      if (isObject(response) && typeof response['model'] === 'string') state.model = response['model'];
      return;
    }
    case 'response.failed':
    case 'response.incomplete':
    case 'error':
      state.failed = true;
      return;
    default:
      return;
  }
}

/** Several text blocks of one Anthropic reply are kept apart by a blank line. */
function addTextBlock(sink: TextSink, text: string): void {
  if (text === '') return;
  if (sink.text !== '') sink.add('\n\n');
  sink.add(text);
}

/** Per-stream state of an Anthropic Messages SSE reply. */
export interface MessagesStream {
  /** Block type by content block index. */
  blocks: Map<number, string>;
  /** Whether the current text block has added text yet (for the separator between blocks). */
  textStarted: boolean;
}

/** Handles one Anthropic Messages SSE event (its `type` field, else the `event:` name). */
export function messagesEvent(eventName: string, data: string, state: ParseState, sink: TextSink, stream: MessagesStream): void {
  if (state.complete) return;
  const payload = eventPayload(data, state);
  if (!payload) return;
  const type = typeof payload['type'] === 'string' ? payload['type'] : eventName;
  switch (type) {
    case 'message_start': {
      const message = payload['message'];
      if (isObject(message) && typeof message['model'] === 'string') state.model = message['model'];
      return;
    }
    case 'content_block_start': {
      const block = payload['content_block'];
      const index = typeof payload['index'] === 'number' ? payload['index'] : -1;
      const blockType = isObject(block) && typeof block['type'] === 'string' ? block['type'] : '';
      stream.blocks.set(index, blockType);
      stream.textStarted = false;
      if (blockType === 'tool_use' || blockType === 'server_tool_use') state.toolCalls = true;
      if (blockType === 'text' && isObject(block) && typeof block['text'] === 'string' && block['text'] !== '') {
        addTextBlock(sink, block['text']);
        stream.textStarted = true;
      }
      return;
    }
    case 'content_block_delta': {
      const delta = payload['delta'];
      const index = typeof payload['index'] === 'number' ? payload['index'] : -1;
      if (!isObject(delta) || delta['type'] !== 'text_delta' || stream.blocks.get(index) !== 'text') return;
      const text = delta['text'];
      if (typeof text !== 'string' || text === '') return;
      if (!stream.textStarted) {
        addTextBlock(sink, text);
        stream.textStarted = true;
      } else sink.add(text);
      return;
    }
    case 'message_delta': {
      const delta = payload['delta'];
      if (isObject(delta) && typeof delta['stop_reason'] === 'string') state.stopReason = delta['stop_reason'];
      return;
    }
    case 'message_stop':
      state.complete = true;
      return;
    case 'error':
      state.failed = true;
      return;
    default:
      return;
  }
}
