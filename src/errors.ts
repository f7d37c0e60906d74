/**
 * Typed errors, and the one place they become HTTP responses.
 *
 * Code throws (or passes to `next`) an `AppError` subclass with a stable `code` and `status`;
 * `sendError` writes OpenAI's error shape on OpenAI's `/v1/*` traffic and Anthropic's on
 * Anthropic's (so each official SDK raises its own exception classes), and the contract's admin
 * shape everywhere else. Internal messages and stack traces never reach a response.
 */
import type { ServerResponse } from 'node:http';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface AnthropicErrorBody {
  type: 'error';
  error: { type: string; message: string };
}

/** Which error body a response gets: the API the request was for, or the proxy's own (admin). */
export type ErrorShape = 'openai' | 'anthropic' | 'admin';

/** Anthropic's `error.type` for a status (its documented set; other 5xx are `api_error`). */
function anthropicErrorType(status: number): string {
  switch (status) {
    case 400:
    case 415:
      return 'invalid_request_error';
    case 401:
      return 'authentication_error';
    case 403:
      return 'permission_error';
    case 404:
      return 'not_found_error';
    case 413:
      return 'request_too_large';
    case 429:
      return 'rate_limit_error';
    default:
      return status < 500 ? 'invalid_request_error' : 'api_error';
  }
}

export abstract class AppError extends Error {
  abstract readonly status: number;
  /** Stable machine-readable code (OpenAI's `error.code`). */
  abstract readonly code: string;
  /** OpenAI's `error.type`. */
  abstract readonly type: string;
  /** The admin API's `error` title. */
  abstract readonly title: string;
  /** Extra headers the response must carry (e.g. `Retry-After`). */
  readonly headers: Readonly<Record<string, string>> = {};
  /** Detail for the admin API body; defaults to the message. */
  readonly details: unknown;

  constructor(message: string, details?: unknown) {
    super(message);
    this.name = new.target.name;
    this.details = details ?? message;
  }

  /** The admin API's body for this error. */
  adminBody(): Record<string, unknown> {
    return { error: this.title, details: this.details };
  }

  openAIBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: null, code: this.code } };
  }

  anthropicBody(): AnthropicErrorBody {
    return { type: 'error', error: { type: anthropicErrorType(this.status), message: this.message } };
  }
}

export class BadRequestError extends AppError {
  readonly status = 400;
  readonly code = 'invalid_request';
  readonly type = 'invalid_request_error';
  readonly title = 'Invalid request';
}

export class UnauthorizedError extends AppError {
  readonly status = 401;
  readonly code = 'invalid_api_key';
  readonly type = 'invalid_request_error';
  readonly title = 'Unauthorized';
}

export class ForbiddenError extends AppError {
  readonly status = 403;
  readonly code = 'forbidden';
  readonly type = 'invalid_request_error';
  readonly title = 'Forbidden';
}

export class NotFoundError extends AppError {
  readonly status = 404;
  readonly code = 'not_found';
  readonly type = 'invalid_request_error';
  readonly title = 'Not found';
}

export class PayloadTooLargeError extends AppError {
  readonly status = 413;
  readonly code = 'payload_too_large';
  readonly type = 'invalid_request_error';
  readonly title = 'Payload too large';
}

export class UnsupportedMediaTypeError extends AppError {
  readonly status = 415;
  readonly code = 'unsupported_media_type';
  readonly type = 'invalid_request_error';
  readonly title = 'Unsupported media type';
}

export class RateLimitError extends AppError {
  readonly status = 429;
  readonly code = 'rate_limit_exceeded';
  readonly type = 'rate_limit_error';
  readonly title = 'Rate limit exceeded';
  override readonly headers: Readonly<Record<string, string>>;

  constructor(
    readonly perMinute: number,
    retryAfterSeconds: number,
  ) {
    super(`Rate limit exceeded: ${perMinute} per minute`);
    this.headers = { 'Retry-After': String(retryAfterSeconds) };
  }

  /** The contract's admin body: `{"error":"Rate limit exceeded","detail":"30 per minute"}`. */
  override adminBody(): Record<string, unknown> {
    return { error: this.title, detail: `${this.perMinute} per minute` };
  }
}

/** The memory engine is not usable (never initialised, failing, or timing out). */
export class MemoryUnavailableError extends AppError {
  readonly status = 503;
  readonly code = 'memory_unavailable';
  readonly type = 'server_error';
  readonly title = 'Service unavailable';

  /** @param transient true when the engine exists but is failing now; false when it was never initialised. */
  constructor(readonly transient: boolean) {
    super(transient ? 'Memory service is temporarily unavailable' : 'Memory service is unavailable');
  }

  override adminBody(): Record<string, unknown> {
    return { error: this.title, details: this.message, status_code: 503 };
  }
}

/**
 * The memory engine's model refused this content for good (an LLM or embedder answered 400, 413
 * or 422: too long for its context, say). Retrying cannot help; the engine itself works.
 */
export class MemoryRejectedError extends AppError {
  readonly status = 422;
  readonly code = 'memory_rejected';
  readonly type = 'invalid_request_error';
  readonly title = 'Unprocessable content';

  constructor() {
    super('The memory engine could not process this content', 'The memory engine could not process this content');
  }
}

/**
 * The user already has as many memories as the proxy allows (`MEMORY_MAX_PER_USER`): nothing is
 * added until some are deleted or the limit is raised.
 */
export class MemoryLimitError extends AppError {
  readonly status = 413;
  readonly code = 'memory_limit_reached';
  readonly type = 'invalid_request_error';
  readonly title = 'Memory limit reached';

  constructor(readonly limit: number) {
    super(`This user has reached the limit of ${limit} memories; delete some before adding more`);
  }
}

export class ServiceUnavailableError extends AppError {
  readonly status = 503;
  readonly code = 'service_unavailable';
  readonly type = 'server_error';
  readonly title = 'Service unavailable';

  override adminBody(): Record<string, unknown> {
    return { error: this.title, details: this.details, status_code: 503 };
  }
}

export class BadGatewayError extends AppError {
  readonly status = 502;
  readonly code = 'upstream_unreachable';
  readonly type = 'server_error';
  readonly title = 'Bad gateway';
}

export class GatewayTimeoutError extends AppError {
  readonly status = 504;
  readonly code = 'upstream_timeout';
  readonly type = 'server_error';
  readonly title = 'Gateway timeout';
}

export class InternalError extends AppError {
  readonly status = 500;
  readonly code = 'internal_error';
  readonly type = 'server_error';
  readonly title = 'Internal server error';
}

/**
 * Writes `err` as the response in `shape`. Errors that are not `AppError`s become a generic 500
 * (or, for errors raised by body parsing, the matching 4xx) without leaking their message.
 */
export function sendError(res: ServerResponse, shape: ErrorShape, err: unknown): void {
  const appError = toAppError(err);
  if (res.headersSent) {
    // Too late for a status: end the response so the client sees it cut short.
    res.destroy();
    return;
  }
  const body = JSON.stringify(shape === 'openai' ? appError.openAIBody() : shape === 'anthropic' ? appError.anthropicBody() : appError.adminBody());
  for (const [name, value] of Object.entries(appError.headers)) res.setHeader(name, value);
  res.statusCode = appError.status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

/** Maps anything thrown to an `AppError`, keeping internal messages out. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  // body-parser and raw-body errors carry a `type` and `status`.
  if (err && typeof err === 'object' && 'type' in err) {
    const t = (err as { type: unknown }).type;
    if (t === 'entity.too.large') return new PayloadTooLargeError('Request body is too large');
    if (t === 'entity.parse.failed') return new BadRequestError('Request body is not valid JSON');
    if (t === 'encoding.unsupported' || t === 'charset.unsupported') return new UnsupportedMediaTypeError('Unsupported body encoding');
    if (t === 'request.aborted') return new BadRequestError('Request aborted');
  }
  // Other client errors from body parsing (a body whose gzip or brotli stream is corrupt, say)
  // carry a 4xx status and `expose`; they are the caller's, not ours.
  if (err && typeof err === 'object' && 'status' in err && 'expose' in err) {
    const { status, expose } = err as { status: unknown; expose: unknown };
    if (expose === true && typeof status === 'number' && status >= 400 && status < 500) return new BadRequestError('Request body could not be decoded');
  }
  return new InternalError('Internal server error');
}
