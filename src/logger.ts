/**
 * The winston logger factory, with redaction.
 *
 * Every line passes through `redact` before it is written: configured secret values are masked
 * wherever they appear, credential-looking fields (authorization, api keys, tokens, passwords)
 * are masked by name, and passwords in URLs are masked. JSON lines in production; readable lines
 * with `debug: true`.
 */
import { MESSAGE } from 'triple-beam';
import Transport from 'winston-transport';
import winston from 'winston';
import { MASK } from './config';

export type Logger = winston.Logger;

const SENSITIVE_KEY =
  /^(authorization|proxy-authorization|x-api-key|api[-_]?key|apikey|token|auth[-_]?token|password|secret|cookie|set-cookie)$/i;
/** `scheme://userinfo@`: everything between `://` and `@` is credentials (`redis://:pw@`, `pg://u:pw@`). */
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)[^/@\s]+@/gi;
const BEARER = /\b(Bearer|Token)\s+[A-Za-z0-9._~+/=-]{4,}/g;

/** Returns a function that masks secrets in any value (strings, arrays, plain objects, errors). */
export function createRedactor(secrets: readonly string[]): (value: unknown) => unknown {
  // Longest first, so a secret that contains another is masked whole.
  const sorted = [...new Set(secrets.filter((s) => s.length >= 4))].sort((a, b) => b.length - a.length);

  const redactString = (s: string): string => {
    let out = s;
    for (const secret of sorted) if (out.includes(secret)) out = out.split(secret).join(MASK);
    // The regular expressions only run where they could match: this is on every log line.
    if (out.includes('@')) out = out.replace(URL_CREDENTIALS, (_m, scheme: string) => `${scheme}${MASK}@`);
    if (out.includes('earer ') || out.includes('oken ')) out = out.replace(BEARER, (_m, kind: string) => `${kind} ${MASK}`);
    return out;
  };

  const walk = (value: unknown, depth: number, seen: WeakSet<object>): unknown => {
    if (typeof value === 'string') return redactString(value);
    if (value === null || typeof value !== 'object') return value;
    if (depth > 8 || seen.has(value)) return '[…]';
    seen.add(value);
    if (Array.isArray(value)) return value.map((v) => walk(v, depth + 1, seen));
    if (value instanceof Error) {
      return { name: value.name, message: redactString(value.message), ...(value.stack ? { stack: redactString(value.stack) } : {}) };
    }
    const hasToJSON = 'toJSON' in value && typeof (value as { toJSON: unknown }).toJSON === 'function';
    const source = hasToJSON ? (value as { toJSON: () => unknown }).toJSON() : value;
    if (source === null || typeof source !== 'object') return walk(source, depth + 1, seen);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(source)) {
      out[k] = SENSITIVE_KEY.test(k) && v !== undefined && v !== null && v !== '' ? MASK : walk(v, depth + 1, seen);
    }
    return out;
  };

  return (value) => walk(value, 0, new WeakSet());
}

/** winston format applying the redactor to the message and every metadata field. */
function redactFormat(secrets: readonly string[]): winston.Logform.Format {
  const redact = createRedactor(secrets);
  return winston.format((info) => {
    for (const key of Object.keys(info)) {
      if (key === 'level') continue;
      (info as Record<string, unknown>)[key] = redact(info[key]);
    }
    return info;
  })();
}

/**
 * Writes each formatted line straight to a stream (stdout by default). winston's Console
 * transport does the same plus a `setImmediate` per line to emit `logged`, which showed up in the
 * proxy's CPU per request; nothing here listens for `logged`.
 */
export class StreamTransport extends Transport {
  constructor(private readonly out: NodeJS.WritableStream = process.stdout) {
    super();
  }
  override log(info: Record<string | symbol, unknown>, callback: () => void): void {
    this.out.write(`${String(info[MESSAGE])}\n`);
    callback();
  }
}

export interface LoggerOptions {
  debug: boolean;
  secrets: readonly string[];
  /** Where lines go (default: stdout). Tests pass a capture. */
  transports?: Transport[];
  /** Silence everything (benchmarks may want this; tests prefer a capture). */
  silent?: boolean;
}

export function createLogger(options: LoggerOptions): Logger {
  const format = options.debug
    ? winston.format.combine(
        redactFormat(options.secrets),
        winston.format.timestamp(),
        winston.format.printf((info) => {
          const { level, message, timestamp, ...meta } = info;
          const rest = Object.keys(meta).length > 0 ? ` ${JSON.stringify(meta)}` : '';
          return `${String(timestamp)} ${level}: ${String(message)}${rest}`;
        }),
      )
    : winston.format.combine(redactFormat(options.secrets), winston.format.timestamp(), winston.format.json());
  return winston.createLogger({
    level: options.debug ? 'debug' : 'info',
    format,
    transports: options.transports ?? [new StreamTransport()],
    silent: options.silent ?? false,
  });
}
