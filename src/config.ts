/**
 * Configuration: the only module that reads `process.env`, `.env` and `config/`.
 *
 * The environment (with `.env` loaded by dotenv underneath it: real variables win) is validated
 * once, every problem reported together, and the result is a deep-frozen typed object whose
 * `toString`, `toJSON` and `util.inspect` never show a secret.
 */
import fs from 'node:fs';
import path from 'node:path';
import util from 'node:util';
import dotenv from 'dotenv';
import { z } from 'zod';

export const MASK = '***';

export type MemoryBackend = 'embedded' | 'platform' | 'pgvector' | 'qdrant';
export type InjectionPlacement = 'before_last_user' | 'first_system';
/**
 * The one list of rate-limited endpoints: each has its own limiter (built at start), its
 * `RATE_LIMIT_<NAME>` variable over the default in config/defaults.json, and the path operators
 * write in a key's `limits` (keys.json).
 */
export const RATE_LIMITED_PATHS = {
  health: '/health',
  search: '/search',
  list: '/list',
  remember: '/remember',
  forget: '/forget',
  v1: '/v1',
  mcp: '/mcp',
  console: '/console',
} as const;
export type RateLimitedEndpoint = keyof typeof RATE_LIMITED_PATHS;
export const RATE_LIMITED_ENDPOINTS = Object.freeze(Object.keys(RATE_LIMITED_PATHS) as RateLimitedEndpoint[]);

type RateLimitVariable = `RATE_LIMIT_${Uppercase<RateLimitedEndpoint>}`;
const rateLimitVariable = (endpoint: RateLimitedEndpoint): RateLimitVariable => `RATE_LIMIT_${endpoint.toUpperCase()}` as RateLimitVariable;

/** One entry per endpoint, built from RATE_LIMITED_ENDPOINTS (typed as the full record). */
function perEndpoint<K extends string, V>(
  key: (endpoint: RateLimitedEndpoint) => K,
  value: (endpoint: RateLimitedEndpoint) => V,
): Record<K, V> {
  return Object.fromEntries(RATE_LIMITED_ENDPOINTS.map((endpoint) => [key(endpoint), value(endpoint)])) as Record<K, V>;
}

export interface Config {
  readonly version: string;
  readonly server: { readonly host: string; readonly port: number; readonly trustProxy: boolean };
  readonly debug: boolean;
  readonly authToken: string | undefined;
  readonly openaiApiKey: string | undefined;
  readonly upstream: { readonly baseUrl: string; readonly timeoutMs: number };
  /** Anthropic's API (`/v1/messages`, Claude Code): where it goes, and the proxy's own key for it. */
  readonly anthropic: { readonly baseUrl: string; readonly apiKey: string | undefined };
  readonly maxBodyBytes: number;
  /** Browser origins (`https://host[:port]`) allowed to call the proxy cross-origin. */
  readonly allowedOrigins: readonly string[];
  /** Host names a request's `Host` header may name (DNS-rebinding protection); undefined: any. */
  readonly allowedHosts: readonly string[] | undefined;
  readonly dataDir: string;
  readonly redisUrl: string | undefined;
  readonly keysFile: string;
  readonly rateLimits: {
    readonly windowMs: number;
    readonly perMinute: Readonly<Record<RateLimitedEndpoint, number>>;
    /** Key prefix of the shared counters in Redis (each endpoint appends `<endpoint>:`). */
    readonly redisPrefix: string;
    /** With the shared store unreachable: refuse with 503 (true) or serve unlimited (false). */
    readonly failClosed: boolean;
    /** Refused credentials per minute per client address before it is answered 429 (this process). */
    readonly failedAuthPerMinute: number;
  };
  /** Where queued exchanges wait to be saved: a SQLite file under DATA_DIR, or Postgres shared by the instances. */
  readonly saveQueue: {
    readonly kind: 'sqlite' | 'postgres';
    /** The Postgres queue's database (SAVE_QUEUE_URL, else DATABASE_URL). */
    readonly url: string | undefined;
    /** How long a claimed save is one instance's without renewal before another may take it. */
    readonly leaseMs: number;
  };
  /** The memory console (`/ui`) and its injection trace. */
  readonly console: {
    /** Memory-route requests the trace keeps (0: no trace). */
    readonly traceRequests: number;
    /** Where the built console (`npm run build`) is served from. */
    readonly uiDir: string;
  };
  readonly memory: {
    readonly backend: MemoryBackend;
    readonly provider: string;
    readonly model: string;
    readonly llmBaseUrl: string;
    readonly embedderBaseUrl: string;
    readonly embeddingModel: string;
    readonly embeddingDims: number;
    readonly searchTimeoutMs: number;
    readonly topK: number;
    readonly scoreThreshold: number;
    readonly injection: { readonly placement: InjectionPlacement; readonly maxChars: number };
    /** Most memories one user may have before adds are refused (0: no limit). */
    readonly maxPerUser: number;
    readonly mem0ApiKey: string | undefined;
    readonly mem0Host: string | undefined;
    readonly databaseUrl: string | undefined;
    /** Connections each pgvector store (memories, entities) may hold at once. */
    readonly pgPoolSize: number;
    readonly qdrantUrl: string | undefined;
    readonly qdrantApiKey: string | undefined;
    readonly telemetry: boolean;
  };
  /** Every secret value in this configuration, for the logger's redaction. */
  readonly secrets: readonly string[];
  /** The configuration with every secret replaced by `***`: safe to log. */
  safeDump(): Record<string, unknown>;
}

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Names of variables whose values are secrets in their own right. */
const SECRET_VARIABLES = ['OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'AUTH_TOKEN', 'MEM0_API_KEY', 'QDRANT_API_KEY'] as const;
/** Names of variables that are URLs and may carry credentials. */
const URL_VARIABLES_WITH_CREDENTIALS = ['REDIS_URL', 'DATABASE_URL', 'QDRANT_URL', 'SAVE_QUEUE_URL'] as const;

// ---------------------------------------------------------------- schema helpers

/** Empty strings count as unset, as in most shells' `FOO=` lines. */
const blankToUndefined = (v: unknown): unknown => (typeof v === 'string' && v.trim() === '' ? undefined : v);

const optionalString = z.preprocess(blankToUndefined, z.string().optional());

const intVar = (min: number, max: number) =>
  z.preprocess(
    blankToUndefined,
    z
      .string()
      .regex(/^\d+$/, 'must be a whole number')
      .transform(Number)
      .pipe(z.number().int().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
      .optional(),
  );

const numberVar = (min: number, max: number) =>
  z.preprocess(
    blankToUndefined,
    z
      .string()
      .regex(/^\d+(\.\d+)?$/, 'must be a number')
      .transform(Number)
      .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
      .optional(),
  );

const boolVar = z.preprocess(
  blankToUndefined,
  z
    .string()
    .transform((s) => s.toLowerCase())
    .pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no']))
    .transform((s) => s === 'true' || s === '1' || s === 'yes')
    .optional(),
);

const urlVar = (protocols: readonly string[]) =>
  z.preprocess(
    blankToUndefined,
    z
      .string()
      .refine(
        (s) => {
          try {
            return protocols.includes(new URL(s).protocol);
          } catch {
            return false;
          }
        },
        `must be a URL (${protocols.join(' or ')})`,
      )
      .optional(),
  );

const envSchema = z.object({
  OPENAI_API_KEY: optionalString,
  MEM0_PROVIDER: optionalString,
  MODEL_NAME: optionalString,
  AUTH_TOKEN: optionalString.refine((s) => s === undefined || s.length >= 8, 'must be at least 8 characters'),
  SERVER_HOST: optionalString,
  SERVER_PORT: intVar(0, 65535),
  DEBUG: boolVar,
  TRUST_PROXY: boolVar,
  // The request's own path and query are appended to it, so the base carries neither.
  UPSTREAM_BASE_URL: urlVar(['http:', 'https:']).refine(
    (s) => s === undefined || (!s.includes('?') && !s.includes('#')),
    'must not have a query string or fragment',
  ),
  UPSTREAM_TIMEOUT_MS: intVar(1, 24 * 3600 * 1000),
  ANTHROPIC_API_KEY: optionalString,
  ANTHROPIC_UPSTREAM_BASE_URL: urlVar(['http:', 'https:']).refine(
    (s) => s === undefined || (!s.includes('?') && !s.includes('#')),
    'must not have a query string or fragment',
  ),
  MAX_BODY_BYTES: intVar(1024, 1024 * 1024 * 1024),
  ALLOWED_HOSTS: z.preprocess(
    blankToUndefined,
    z
      .string()
      .transform((s) =>
        s
          .split(',')
          .map((h) => h.trim())
          .filter((h) => h !== ''),
      )
      .refine((list) => list.every((h) => /^[\w.\-:[\]*]+$/.test(h)), 'must be a comma-separated list of host names')
      .optional(),
  ),
  ALLOWED_ORIGINS: z.preprocess(
    blankToUndefined,
    z
      .string()
      .transform((s) =>
        s
          .split(',')
          .map((o) => o.trim())
          .filter((o) => o !== ''),
      )
      .refine(
        (list) => list.every((o) => /^https?:\/\/[^/\s]+$/.test(o)),
        'must be a comma-separated list of origins like https://app.example.com',
      )
      .optional(),
  ),
  DATA_DIR: optionalString,
  REDIS_URL: urlVar(['redis:', 'rediss:']),
  KEYS_FILE: optionalString,
  MEMORY_BACKEND: z.preprocess(blankToUndefined, z.enum(['embedded', 'platform', 'pgvector', 'qdrant']).optional()),
  MEM0_LLM_BASE_URL: urlVar(['http:', 'https:']),
  MEM0_EMBEDDER_BASE_URL: urlVar(['http:', 'https:']),
  EMBEDDING_MODEL: optionalString,
  EMBEDDING_DIMS: intVar(1, 65536),
  MEMORY_SEARCH_TIMEOUT_MS: intVar(1, 600000),
  MEMORY_TOP_K: intVar(0, 100),
  MEMORY_SCORE_THRESHOLD: numberVar(0, 1),
  MEMORY_INJECTION_PLACEMENT: z.preprocess(blankToUndefined, z.enum(['before_last_user', 'first_system']).optional()),
  MEMORY_INJECTION_MAX_CHARS: intVar(100, 1000000),
  MEMORY_MAX_PER_USER: intVar(0, 100_000_000),
  MEM0_API_KEY: optionalString,
  MEM0_HOST: urlVar(['http:', 'https:']),
  MEM0_TELEMETRY: boolVar,
  DATABASE_URL: urlVar(['postgres:', 'postgresql:']),
  PGVECTOR_POOL_SIZE: intVar(1, 1000),
  SAVE_QUEUE: z.preprocess(blankToUndefined, z.enum(['sqlite', 'postgres']).optional()),
  SAVE_QUEUE_URL: urlVar(['postgres:', 'postgresql:']),
  SAVE_QUEUE_LEASE_MS: intVar(1000, 3_600_000),
  QDRANT_URL: urlVar(['http:', 'https:']),
  QDRANT_API_KEY: optionalString,
  ...perEndpoint(rateLimitVariable, () => intVar(1, 1e9)),
  TRACE_REQUESTS: intVar(0, 1_000_000),
  RATE_LIMIT_REDIS_PREFIX: optionalString,
  RATE_LIMIT_FAIL_CLOSED: boolVar,
  RATE_LIMIT_FAILED_AUTH: intVar(1, 1e9),
});

/** Every environment variable the proxy reads (env.example and the README list each one). */
export const ENV_VARIABLES: readonly string[] = Object.freeze(
  [...Object.keys(envSchema.shape), 'MEM0_TELEMETRY'].filter((v, i, a) => a.indexOf(v) === i),
);

const rateLimitSchema = z.object({
  windowMs: z.number().int().positive(),
  perMinute: z.object(
    perEndpoint(
      (endpoint) => endpoint,
      () => z.number().int().positive(),
    ),
  ),
});

const defaultsSchema = z.object({
  rateLimits: rateLimitSchema,
  memory: z.object({
    topK: z.number().int().min(0),
    scoreThreshold: z.number().min(0).max(1),
    searchTimeoutMs: z.number().int().positive(),
    injection: z.object({
      placement: z.enum(['before_last_user', 'first_system']),
      maxChars: z.number().int().positive(),
    }),
  }),
});

type Defaults = z.infer<typeof defaultsSchema>;

// ---------------------------------------------------------------- masking

/** Replaces the password (and a user that looks like a token) of a URL with `***`. */
export function maskUrl(raw: string): string {
  try {
    const u = new URL(raw);
    if (u.password) u.password = MASK;
    else if (u.username) u.username = MASK;
    return u.toString();
  } catch {
    return MASK;
  }
}

/** Secret values carried inside a URL (user and password parts). */
function urlSecrets(raw: string | undefined): string[] {
  if (!raw) return [];
  try {
    const u = new URL(raw);
    return [u.password, decodeURIComponent(u.password), u.password ? '' : u.username].filter((s) => s.length >= 4);
  } catch {
    return [raw];
  }
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
  }
  return value;
}

function readDefaults(configDir: string, problems: string[]): Defaults | undefined {
  const file = path.join(configDir, 'defaults.json');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    problems.push(`${file}: cannot be read as JSON (${(err as Error).message})`);
    return undefined;
  }
  const parsed = defaultsSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(`${file}: ${issue.path.join('.')} ${issue.message}`);
    return undefined;
  }
  return parsed.data;
}

function readVersion(): string {
  try {
    const pkg: unknown = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
    if (pkg && typeof pkg === 'object' && 'version' in pkg && typeof pkg.version === 'string') return pkg.version;
  } catch {
    // fall through: a missing package.json only loses the version string
  }
  return '0.0.0';
}

export interface LoadConfigOptions {
  /** Variables to read; defaults to `process.env` merged over `.env`. */
  env?: Record<string, string | undefined>;
  /** Where `.env` is looked for when `env` is not given (default: the working directory). */
  dotenvPath?: string;
  /** Folder with `defaults.json` (default: the project's `config/`). */
  configDir?: string;
}

/**
 * Reads and validates the configuration once.
 * @throws ConfigError naming every bad variable at once.
 */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  let env = options.env;
  if (!env) {
    // dotenv never overrides a variable that is already set: the real environment wins.
    const fromFile: Record<string, string> = {};
    dotenv.config({ path: options.dotenvPath ?? path.resolve('.env'), processEnv: fromFile, quiet: true });
    env = { ...fromFile, ...process.env };
  }

  const problems: string[] = [];
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const name = issue.path.join('.');
      // Never echo the offending value: it may be a secret.
      problems.push(`${name}: ${issue.message}`);
    }
  }
  const defaults = readDefaults(options.configDir ?? path.join(__dirname, '..', 'config'), problems);
  if (!parsed.success || !defaults) throw new ConfigError(problems);
  const e = parsed.data;

  if (e.AUTH_TOKEN && !e.OPENAI_API_KEY) {
    problems.push(
      'AUTH_TOKEN is set but OPENAI_API_KEY is not: callers authenticate with AUTH_TOKEN, so the proxy needs its own upstream key',
    );
  }
  if (e.MEMORY_BACKEND === 'pgvector' && !e.DATABASE_URL) problems.push('DATABASE_URL: required when MEMORY_BACKEND=pgvector');
  const saveQueueKind = e.SAVE_QUEUE ?? (e.MEMORY_BACKEND === 'pgvector' ? 'postgres' : 'sqlite');
  if (saveQueueKind === 'postgres' && !(e.SAVE_QUEUE_URL ?? e.DATABASE_URL))
    problems.push('SAVE_QUEUE_URL: required when SAVE_QUEUE=postgres (or set DATABASE_URL)');
  if (e.MEMORY_BACKEND === 'qdrant' && !e.QDRANT_URL) problems.push('QDRANT_URL: required when MEMORY_BACKEND=qdrant');
  if (problems.length > 0) throw new ConfigError(problems);

  const upstreamBaseUrl = (e.UPSTREAM_BASE_URL ?? 'https://api.openai.com/v1').replace(/\/+$/, '');
  const perMinute = perEndpoint(
    (endpoint) => endpoint,
    (endpoint) => e[rateLimitVariable(endpoint)] ?? defaults.rateLimits.perMinute[endpoint],
  );

  const secrets = [
    ...SECRET_VARIABLES.map((name) => e[name]).filter((s): s is string => typeof s === 'string' && s.length > 0),
    ...URL_VARIABLES_WITH_CREDENTIALS.flatMap((name) => urlSecrets(e[name])),
  ];

  const data = {
    version: readVersion(),
    server: { host: e.SERVER_HOST ?? 'localhost', port: e.SERVER_PORT ?? 8000, trustProxy: e.TRUST_PROXY ?? false },
    debug: e.DEBUG ?? false,
    authToken: e.AUTH_TOKEN,
    openaiApiKey: e.OPENAI_API_KEY,
    upstream: { baseUrl: upstreamBaseUrl, timeoutMs: e.UPSTREAM_TIMEOUT_MS ?? 600000 },
    anthropic: { baseUrl: anthropicBaseUrl(e.ANTHROPIC_UPSTREAM_BASE_URL), apiKey: e.ANTHROPIC_API_KEY },
    maxBodyBytes: e.MAX_BODY_BYTES ?? 20971520,
    allowedOrigins: e.ALLOWED_ORIGINS ?? [],
    allowedHosts: allowedHosts(e.ALLOWED_HOSTS, e.SERVER_HOST ?? 'localhost'),
    dataDir: path.resolve(e.DATA_DIR ?? './data'),
    redisUrl: e.REDIS_URL,
    keysFile: path.resolve(e.KEYS_FILE ?? path.join(__dirname, '..', 'config', 'keys.json')),
    rateLimits: {
      windowMs: defaults.rateLimits.windowMs,
      perMinute,
      redisPrefix: e.RATE_LIMIT_REDIS_PREFIX ?? 'mp:rl:',
      failClosed: e.RATE_LIMIT_FAIL_CLOSED ?? false,
      failedAuthPerMinute: e.RATE_LIMIT_FAILED_AUTH ?? 30,
    },
    saveQueue: {
      kind: saveQueueKind,
      url: saveQueueKind === 'postgres' ? (e.SAVE_QUEUE_URL ?? e.DATABASE_URL) : undefined,
      leaseMs: e.SAVE_QUEUE_LEASE_MS ?? 60_000,
    },
    console: {
      traceRequests: e.TRACE_REQUESTS ?? 1000,
      uiDir: path.resolve(__dirname, '..', 'dist', 'ui'),
    },
    memory: {
      backend: e.MEMORY_BACKEND ?? 'embedded',
      provider: e.MEM0_PROVIDER ?? 'openai',
      model: e.MODEL_NAME ?? 'gpt-4o-mini',
      llmBaseUrl: (e.MEM0_LLM_BASE_URL ?? upstreamBaseUrl).replace(/\/+$/, ''),
      embedderBaseUrl: (e.MEM0_EMBEDDER_BASE_URL ?? upstreamBaseUrl).replace(/\/+$/, ''),
      embeddingModel: e.EMBEDDING_MODEL ?? 'text-embedding-3-small',
      embeddingDims: e.EMBEDDING_DIMS ?? 1536,
      searchTimeoutMs: e.MEMORY_SEARCH_TIMEOUT_MS ?? defaults.memory.searchTimeoutMs,
      topK: e.MEMORY_TOP_K ?? defaults.memory.topK,
      scoreThreshold: e.MEMORY_SCORE_THRESHOLD ?? defaults.memory.scoreThreshold,
      injection: {
        placement: e.MEMORY_INJECTION_PLACEMENT ?? defaults.memory.injection.placement,
        maxChars: e.MEMORY_INJECTION_MAX_CHARS ?? defaults.memory.injection.maxChars,
      },
      maxPerUser: e.MEMORY_MAX_PER_USER ?? 50_000,
      mem0ApiKey: e.MEM0_API_KEY,
      mem0Host: e.MEM0_HOST,
      databaseUrl: e.DATABASE_URL,
      pgPoolSize: e.PGVECTOR_POOL_SIZE ?? 4,
      qdrantUrl: e.QDRANT_URL,
      qdrantApiKey: e.QDRANT_API_KEY,
      telemetry: e.MEM0_TELEMETRY ?? false,
    },
  };

  return sealConfig(data, secrets);
}

/**
 * The host names requests may name: `ALLOWED_HOSTS` (`*` = any), else the loopback names when the
 * proxy listens on loopback only (nothing else can reach it legitimately), else any.
 */
function allowedHosts(configured: string[] | undefined, listenHost: string): string[] | undefined {
  if (configured !== undefined) return configured.includes('*') ? undefined : configured;
  const loopback = ['localhost', '127.0.0.1', '::1'];
  return loopback.includes(listenHost.toLowerCase().replace(/^\[|\]$/g, '')) ? loopback : undefined;
}

/**
 * Anthropic's base URL as its SDK takes it (`https://api.anthropic.com`, paths start with `/v1`),
 * written down here once with the `/v1` the proxy's request paths are resolved under; a base that
 * already ends in `/v1` is taken as it is.
 */
function anthropicBaseUrl(raw: string | undefined): string {
  const base = (raw ?? 'https://api.anthropic.com').replace(/\/+$/, '');
  return base.endsWith('/v1') ? base : `${base}/v1`;
}

/** The configuration's plain data: what `{...config}` copies and a worker thread receives. */
export type ConfigData = Omit<Config, 'secrets' | 'safeDump'>;

/**
 * Rebuilds a configuration from its data and secrets, as `loadConfig` made it (masking methods,
 * frozen). For a worker thread, which receives the data by structured clone: the data was
 * validated by the `loadConfig` that produced it.
 */
export function configFromData(data: ConfigData, secrets: readonly string[]): Config {
  return sealConfig(data, [...secrets]);
}

function sealConfig(data: ConfigData, secrets: string[]): Config {
  const safeDump = (): Record<string, unknown> => {
    const mask = (s: string | undefined): string | undefined => (s === undefined ? undefined : MASK);
    const maskU = (s: string | undefined): string | undefined => (s === undefined ? undefined : maskUrl(s));
    return {
      ...data,
      authToken: mask(data.authToken),
      openaiApiKey: mask(data.openaiApiKey),
      anthropic: { ...data.anthropic, apiKey: mask(data.anthropic.apiKey) },
      redisUrl: maskU(data.redisUrl),
      saveQueue: { ...data.saveQueue, url: maskU(data.saveQueue.url) },
      memory: {
        ...data.memory,
        mem0ApiKey: mask(data.memory.mem0ApiKey),
        databaseUrl: maskU(data.memory.databaseUrl),
        qdrantUrl: maskU(data.memory.qdrantUrl),
        qdrantApiKey: mask(data.memory.qdrantApiKey),
      },
    };
  };

  const config: Config = { ...data, secrets: Object.freeze(secrets), safeDump };
  Object.defineProperties(config, {
    safeDump: { enumerable: false },
    // `secrets` is for the logger only: kept out of enumeration so spreading or iterating the
    // config never carries it along.
    secrets: { enumerable: false },
    toJSON: { value: safeDump, enumerable: false },
    toString: { value: () => JSON.stringify(safeDump()), enumerable: false },
    [util.inspect.custom]: { value: () => safeDump(), enumerable: false },
  });
  return deepFreeze(config);
}
