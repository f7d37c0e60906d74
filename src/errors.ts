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

/** What every error of one kind answers with, in each of the three shapes. */
export interface ErrorKind {
  readonly status: number;
  /** Stable machine-readable code (OpenAI's `error.code`). */
  readonly code: string;
  /** OpenAI's `error.type`. */
  readonly type: string;
  /** Anthropic's `error.type` (its documented set for the status). */
  readonly anthropicType: string;
  /** The admin API's `error` title. */
  readonly title: string;
  /** The admin body also carries `status_code` (the contract's 503 bodies do). */
  readonly adminStatusCode?: true;
}

/** Every kind of error a response can carry: the one table of status, types, code and title. */
export const ERROR_KINDS = {
  badRequest: {
    status: 400,
    code: 'invalid_request',
    type: 'invalid_request_error',
    anthropicType: 'invalid_request_error',
    title: 'Invalid request',
  },
  unauthorized: {
    status: 401,
    code: 'invalid_api_key',
    type: 'invalid_request_error',
    anthropicType: 'authentication_error',
    title: 'Unauthorized',
  },
  forbidden: { status: 403, code: 'forbidden', type: 'invalid_request_error', anthropicType: 'permission_error', title: 'Forbidden' },
  notFound: { status: 404, code: 'not_found', type: 'invalid_request_error', anthropicType: 'not_found_error', title: 'Not found' },
  payloadTooLarge: {
    status: 413,
    code: 'payload_too_large',
    type: 'invalid_request_error',
    anthropicType: 'request_too_large',
    title: 'Payload too large',
  },
  memoryLimit: {
    status: 413,
    code: 'memory_limit_reached',
    type: 'invalid_request_error',
    anthropicType: 'request_too_large',
    title: 'Memory limit reached',
  },
  unsupportedMediaType: {
    status: 415,
    code: 'unsupported_media_type',
    type: 'invalid_request_error',
    anthropicType: 'invalid_request_error',
    title: 'Unsupported media type',
  },
  memoryRejected: {
    status: 422,
    code: 'memory_rejected',
    type: 'invalid_request_error',
    anthropicType: 'invalid_request_error',
    title: 'Unprocessable content',
  },
  rateLimited: {
    status: 429,
    code: 'rate_limit_exceeded',
    type: 'rate_limit_error',
    anthropicType: 'rate_limit_error',
    title: 'Rate limit exceeded',
  },
  internal: { status: 500, code: 'internal_error', type: 'server_error', anthropicType: 'api_error', title: 'Internal server error' },
  badGateway: { status: 502, code: 'upstream_unreachable', type: 'server_error', anthropicType: 'api_error', title: 'Bad gateway' },
  memoryUnavailable: {
    status: 503,
    code: 'memory_unavailable',
    type: 'server_error',
    anthropicType: 'api_error',
    title: 'Service unavailable',
    adminStatusCode: true,
  },
  serviceUnavailable: {
    status: 503,
    code: 'service_unavailable',
    type: 'server_error',
    anthropicType: 'api_error',
    title: 'Service unavailable',
    adminStatusCode: true,
  },
  gatewayTimeout: { status: 504, code: 'upstream_timeout', type: 'server_error', anthropicType: 'api_error', title: 'Gateway timeout' },
} as const satisfies Record<string, ErrorKind>;

export abstract class AppError extends Error {
  readonly status: number;
  readonly code: string;
  readonly type: string;
  readonly title: string;
  /** Extra headers the response must carry (e.g. `Retry-After`). */
  readonly headers: Readonly<Record<string, string>> = {};
  /** Detail for the admin API body; defaults to the message. */
  readonly details: unknown;

  constructor(
    readonly kind: ErrorKind,
    message: string,
    details?: unknown,
  ) {
    super(message);
    this.name = new.target.name;
    this.status = kind.status;
    this.code = kind.code;
    this.type = kind.type;
    this.title = kind.title;
    this.details = details ?? message;
  }

  /** The admin API's body for this error. */
  adminBody(): Record<string, unknown> {
    return this.kind.adminStatusCode
      ? { error: this.title, details: this.details, status_code: this.status }
      : { error: this.title, details: this.details };
  }

  openAIBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: null, code: this.code } };
  }

  anthropicBody(): AnthropicErrorBody {
    return { type: 'error', error: { type: this.kind.anthropicType, message: this.message } };
  }
}

/** An AppError class of one kind: `new BadRequestError(message, details?)`. */
function errorOfKind(kind: ErrorKind) {
  return class extends AppError {
    constructor(message: string, details?: unknown) {
      super(kind, message, details);
    }
  };
}

export class BadRequestError extends errorOfKind(ERROR_KINDS.badRequest) {}
export class UnauthorizedError extends errorOfKind(ERROR_KINDS.unauthorized) {}
export class ForbiddenError extends errorOfKind(ERROR_KINDS.forbidden) {}
export class NotFoundError extends errorOfKind(ERROR_KINDS.notFound) {}
export class PayloadTooLargeError extends errorOfKind(ERROR_KINDS.payloadTooLarge) {}
export class UnsupportedMediaTypeError extends errorOfKind(ERROR_KINDS.unsupportedMediaType) {}
export class ServiceUnavailableError extends errorOfKind(ERROR_KINDS.serviceUnavailable) {}
export class BadGatewayError extends errorOfKind(ERROR_KINDS.badGateway) {}
export class GatewayTimeoutError extends errorOfKind(ERROR_KINDS.gatewayTimeout) {}
export class InternalError extends errorOfKind(ERROR_KINDS.internal) {}

export class RateLimitError extends AppError {
  override readonly headers: Readonly<Record<string, string>>;

  constructor(
    readonly perMinute: number,
    retryAfterSeconds: number,
  ) {
    super(ERROR_KINDS.rateLimited, `Rate limit exceeded: ${perMinute} per minute`);
    this.headers = { 'Retry-After': String(retryAfterSeconds) };
  }

  /** The contract's admin body: `{"error":"Rate limit exceeded","detail":"30 per minute"}`. */
  override adminBody(): Record<string, unknown> {
    return { error: this.title, detail: `${this.perMinute} per minute` };
  }
}

/** The memory engine is not usable (never initialised, failing, or timing out). */
export class MemoryUnavailableError extends AppError {
  /** @param transient true when the engine exists but is failing now; false when it was never initialised. */
  constructor(readonly transient: boolean) {
    const message = transient ? 'Memory service is temporarily unavailable' : 'Memory service is unavailable';
    super(ERROR_KINDS.memoryUnavailable, message);
  }
}

/**
 * The memory engine's model refused this content for good (an LLM or embedder answered 400, 413
 * or 422: too long for its context, say). Retrying cannot help; the engine itself works.
 */
export class MemoryRejectedError extends AppError {
  constructor() {
    super(ERROR_KINDS.memoryRejected, 'The memory engine could not process this content');
  }
}

/**
 * The user already has as many memories as the proxy allows (`MEMORY_MAX_PER_USER`): nothing is
 * added until some are deleted or the limit is raised.
 */
export class MemoryLimitError extends AppError {
  constructor(readonly limit: number) {
    super(ERROR_KINDS.memoryLimit, `This user has reached the limit of ${limit} memories; delete some before adding more`);
  }
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
  const body = JSON.stringify(
    shape === 'openai' ? appError.openAIBody() : shape === 'anthropic' ? appError.anthropicBody() : appError.adminBody(),
  );
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
    if (expose === true && typeof status === 'number' && status >= 400 && status < 500)
      return new BadRequestError('Request body could not be decoded');
  }
  return new InternalError('Internal server error');
}
