/**
 * The key registry (contract §2): named callers, each stored only as the SHA-256 digest of its key,
 * with an optional bound memory user, admin flag, rate-limit overrides and expiry.
 *
 * The file (`KEYS_FILE`) is read and validated once at start, where a bad file is fatal, and again
 * on `reload()` (SIGHUP), where a bad file keeps the registry that was loaded before. A file that
 * is absent means "no registry" (inactive) until a reload finds one; once the registry is active,
 * an absent file on reload means "no keys" (every key revoked), the safe reading of a deleted file.
 *
 * Lookup is constant-time in the sense that matters: the presented key is hashed, and its digest
 * is compared with `timingSafeEqual` against every entry's digest, without stopping at a match, so
 * the time taken depends on the number of entries only, never on which (if any) matched or how
 * much of a digest agreed. (A Map keyed by digest would also be safe, since the digest of an
 * unknown key reveals nothing about the stored ones; the full scan is chosen because it is obvious
 * on reading and registries are small.)
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { z } from 'zod';
import { RATE_LIMITED_ENDPOINTS, RATE_LIMITED_PATHS, type RateLimitedEndpoint } from '../config';
import type { Caller } from '../http/context';
import { memoryIdProblem } from '../memory/scope';
import type { Logger } from '../logger';

/** Endpoint paths as operators write them in `limits`, and the rate limiter each one names. */
export const LIMIT_PATHS: Readonly<Record<string, RateLimitedEndpoint>> = Object.freeze(
  Object.fromEntries(RATE_LIMITED_ENDPOINTS.map((endpoint) => [RATE_LIMITED_PATHS[endpoint], endpoint])),
);

/** Ids become rate-limit keys and log fields: a plain, short charset, and never a built-in caller id. */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

const limitsSchema = z
  .record(z.string(), z.number().int('must be a whole number').positive('must be positive').max(1e9, 'must be at most 1000000000'))
  .superRefine((limits, ctx) => {
    for (const key of Object.keys(limits)) {
      if (!(key in LIMIT_PATHS)) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: [key],
          message: `unknown endpoint (use one of ${Object.keys(LIMIT_PATHS).join(', ')})`,
        });
      }
    }
  });

const entrySchema = z
  .object({
    id: z
      .string()
      .regex(ID_PATTERN, 'must be 1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit')
      .refine((id) => id !== 'token', '"token" is reserved for AUTH_TOKEN'),
    sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be the 64 hex digits of a SHA-256 digest'),
    user_id: z
      .string()
      .trim()
      .min(1, 'must not be empty')
      .refine(
        (v) => memoryIdProblem(v) === undefined,
        (v) => ({ message: memoryIdProblem(v) ?? 'invalid' }),
      )
      .optional(),
    admin: z.boolean().optional(),
    limits: limitsSchema.optional(),
    expires_at: z.string().datetime({ offset: true, message: 'must be an ISO 8601 date-time, e.g. 2027-01-01T00:00:00Z' }).optional(),
  })
  .strict();

const fileSchema = z
  .object({ keys: z.array(entrySchema) })
  .strict()
  .superRefine((file, ctx) => {
    const ids = new Set<string>();
    const digests = new Set<string>();
    file.keys.forEach((entry, i) => {
      if (ids.has(entry.id)) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['keys', i, 'id'], message: `duplicate id "${entry.id}"` });
      ids.add(entry.id);
      const digest = entry.sha256.toLowerCase();
      if (digests.has(digest))
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['keys', i, 'sha256'], message: 'duplicate digest (two entries for one key)' });
      digests.add(digest);
    });
  });

/** One registry entry exactly as stored in the file. */
export type KeyEntryJson = z.infer<typeof entrySchema>;
export type KeysFileJson = z.infer<typeof fileSchema>;

export interface KeyEntry {
  readonly id: string;
  readonly digest: Buffer;
  readonly caller: Caller;
  /** Epoch milliseconds after which the key is refused; undefined = never. */
  readonly expiresAt: number | undefined;
}

export class KeyRegistryError extends Error {
  constructor(
    readonly file: string,
    readonly problems: readonly string[],
  ) {
    super(`Invalid key registry ${file}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'KeyRegistryError';
  }
}

/** SHA-256 of a key as lower-case hex: what the registry stores. */
export function keyDigestHex(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/**
 * Validates a parsed registry file.
 * @throws KeyRegistryError naming every problem (path within the file and what is wrong), never a value.
 */
export function parseKeysFile(raw: unknown, file: string): KeysFileJson {
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) {
    throw new KeyRegistryError(
      file,
      parsed.error.issues.map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(file)'}: ${issue.message}`),
    );
  }
  return parsed.data;
}

/**
 * Reads and validates the registry file.
 * @returns undefined when the file does not exist.
 * @throws KeyRegistryError when it cannot be read, is not JSON, or does not validate.
 */
export function readKeysFile(file: string): KeysFileJson | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KeyRegistryError(file, [`cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new KeyRegistryError(file, [`is not valid JSON (${(err as Error).message})`]);
  }
  return parseKeysFile(raw, file);
}

function toEntry(json: KeyEntryJson): KeyEntry {
  const limits: Partial<Record<RateLimitedEndpoint, number>> = {};
  for (const [endpointPath, perMinute] of Object.entries(json.limits ?? {})) {
    const endpoint = LIMIT_PATHS[endpointPath];
    if (endpoint !== undefined) limits[endpoint] = perMinute;
  }
  const caller: Caller = Object.freeze({
    id: json.id,
    kind: 'key' as const,
    userId: json.user_id,
    admin: json.admin ?? false,
    limits: Object.freeze(limits),
  });
  return {
    id: json.id,
    digest: Buffer.from(json.sha256.toLowerCase(), 'hex'),
    caller,
    expiresAt: json.expires_at === undefined ? undefined : Date.parse(json.expires_at),
  };
}

export interface KeyRegistryOptions {
  file: string;
  logger: Logger;
  /** Clock for expiry (tests). */
  now?: () => number;
}

export interface ReloadResult {
  ok: boolean;
  /** Entries in effect after the reload (the old ones when it failed). */
  count: number;
  problems: readonly string[];
}

/** The registry; replace its entries with `reload()`. */
export class KeyRegistry {
  private entries: readonly KeyEntry[];
  private readonly now: () => number;
  private isActive: boolean;

  private constructor(
    private readonly options: KeyRegistryOptions,
    entries: readonly KeyEntry[] | undefined,
  ) {
    this.entries = entries ?? [];
    this.isActive = entries !== undefined;
    this.now = options.now ?? Date.now;
  }

  /**
   * The registry at start, active when its file exists (an absent file can appear later: reload).
   * @throws KeyRegistryError when the file is bad: the process must refuse to start.
   */
  static open(options: KeyRegistryOptions): KeyRegistry {
    const json = readKeysFile(options.file);
    const registry = new KeyRegistry(options, json?.keys.map(toEntry));
    if (json) options.logger.info('key registry loaded', { file: options.file, keys: registry.size });
    return registry;
  }

  /** The registry at start when its file exists, else undefined (callers that need no later file). */
  static load(options: KeyRegistryOptions): KeyRegistry | undefined {
    const registry = KeyRegistry.open(options);
    return registry.active ? registry : undefined;
  }

  /** Whether a registry file has been read (at start or on a reload): then keys are required. */
  get active(): boolean {
    return this.isActive;
  }

  get size(): number {
    return this.entries.length;
  }

  get file(): string {
    return this.options.file;
  }

  /** Ids in file order (for logs and tests; never digests). */
  ids(): string[] {
    return this.entries.map((e) => e.id);
  }

  /**
   * Re-reads the file. A bad file keeps the current entries and logs why; a missing file empties
   * the registry (every key revoked).
   */
  reload(): ReloadResult {
    let json: KeysFileJson | undefined;
    try {
      json = readKeysFile(this.options.file);
    } catch (err) {
      const problems = err instanceof KeyRegistryError ? err.problems : [String(err)];
      this.options.logger.error('key registry not reloaded: the file is invalid, the previous keys stay in effect', {
        file: this.options.file,
        problems,
        keys: this.size,
      });
      return { ok: false, count: this.size, problems };
    }
    if (json === undefined && !this.isActive) {
      this.options.logger.warn('no key registry file to reload: still in the mode the proxy started in', { file: this.options.file });
      return { ok: true, count: 0, problems: [] };
    }
    if (json === undefined) {
      this.options.logger.warn('key registry file is gone: every registry key is revoked', { file: this.options.file });
      this.entries = [];
    } else {
      if (!this.isActive) {
        this.options.logger.warn('key registry file found: registry keys are accepted and, from now on, every caller needs a key', {
          file: this.options.file,
        });
      }
      this.entries = json.keys.map(toEntry);
      this.isActive = true;
    }
    this.options.logger.info('key registry reloaded', { file: this.options.file, keys: this.size });
    return { ok: true, count: this.size, problems: [] };
  }

  /**
   * The caller a presented key stands for: undefined when it matches no entry or the entry has
   * expired. Compares against every entry (see the file header).
   */
  identify(credential: string): Caller | undefined {
    const presented = createHash('sha256').update(credential, 'utf8').digest();
    let match: KeyEntry | undefined;
    for (const entry of this.entries) {
      // No early exit: every digest is compared whatever matched before.
      if (timingSafeEqual(presented, entry.digest) && match === undefined) match = entry;
    }
    if (match === undefined) return undefined;
    if (match.expiresAt !== undefined && this.now() >= match.expiresAt) {
      this.options.logger.debug('expired registry key presented', { key_id: match.id });
      return undefined;
    }
    return match.caller;
  }
}
