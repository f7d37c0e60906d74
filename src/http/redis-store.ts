/**
 * Shared rate-limit counters in Redis (`REDIS_URL`), so N instances enforce one limit, not N.
 *
 * One ioredis client serves every endpoint's store (rate-limit-redis, keys `<prefix><endpoint>:<caller>`).
 * Redis being down never stalls a request: commands fail at once while disconnected (no offline
 * queue, bounded retries), the store turns the failure into a 503 `ServiceUnavailableError`, and
 * express-rate-limit either serves the request unlimited (`passOnStoreError`, the default) or
 * passes that 503 on (`RATE_LIMIT_FAIL_CLOSED=true`). Failures are counted (`onStoreError`) and
 * logged at most once per interval; ioredis keeps reconnecting, and counting resumes by itself.
 */
import Redis from 'ioredis';
import type { ClientRateLimitInfo, IncrementResponse, Options as LimiterOptions, Store } from 'express-rate-limit';
import { RedisStore, type RedisReply } from 'rate-limit-redis';
import type { RateLimitedEndpoint } from '../config';
import { ServiceUnavailableError } from '../errors';
import type { Logger } from '../logger';
import type { SharedFailureCounter } from './failed-logins';
import type { RateLimitStoreFactory } from './rate-limit';

/** At most one "store unavailable" log line per this interval while Redis stays down. */
const LOG_INTERVAL_MS = 30_000;

export interface RedisRateLimitStoreOptions {
  /** `redis://` or `rediss://` URL (may carry a password; never logged). */
  url: string;
  /** Key prefix base; each endpoint's store uses `<prefix><endpoint>:`. */
  prefix: string;
  logger: Logger;
  /** Called once per rate-limit check the store could not answer, for metrics. */
  onStoreError?: ((endpoint: RateLimitedEndpoint) => void) | undefined;
  /** Connect timeout of each (re)connection attempt, ms (default 2000). */
  connectTimeoutMs?: number | undefined;
}

export interface RedisRateLimitStore {
  readonly client: Redis;
  /** Pass to `assemble({ rateLimitStore })`. */
  readonly storeFactory: RateLimitStoreFactory;
  /** Refused credentials per address, shared (pass to `assemble({ failedLoginCounter })`). */
  readonly failureCounter: SharedFailureCounter;
  /** Resolves true once the client is connected, false if that takes longer than `timeoutMs`. */
  ready(timeoutMs: number): Promise<boolean>;
  /** Quits the client (or drops the connection when Redis is unreachable). */
  close(): Promise<void>;
}

/** Reports store failures: counted every time, logged on the first and then once per interval. */
class FailureReporter {
  private failing = false;
  private lastLogAt = 0;
  private suppressed = 0;

  constructor(
    private readonly logger: Logger,
    private readonly onStoreError: ((endpoint: RateLimitedEndpoint) => void) | undefined,
  ) {}

  failure(err: unknown, endpoint?: RateLimitedEndpoint): void {
    if (endpoint) this.onStoreError?.(endpoint);
    const now = Date.now();
    if (!this.failing || now - this.lastLogAt >= LOG_INTERVAL_MS) {
      this.logger.warn('rate-limit store (Redis) unavailable', {
        err: err instanceof Error ? err.message : String(err),
        ...(endpoint ? { endpoint } : {}),
        suppressed_since_last: this.suppressed,
      });
      this.lastLogAt = now;
      this.suppressed = 0;
    } else {
      this.suppressed += 1;
    }
    this.failing = true;
  }

  success(): void {
    if (!this.failing) return;
    this.failing = false;
    this.logger.info('rate-limit store (Redis) is back', { suppressed_since_last: this.suppressed });
    this.suppressed = 0;
  }
}

/**
 * One endpoint's store. rate-limit-redis loads its Lua scripts once, in `init`; if Redis was
 * unreachable then, its script promise stays rejected and it would never count again. So the
 * scripts are (re)loaded here until they have loaded once; after that rate-limit-redis handles
 * NOSCRIPT (a restarted Redis) by itself.
 */
class ResilientRedisStore implements Store {
  readonly localKeys = false;
  readonly prefix: string;
  private readonly inner: RedisStore;
  private limiterOptions: LimiterOptions | undefined;
  private scripts: Promise<void> | undefined;
  private scriptsLoaded = false;

  constructor(
    private readonly endpoint: RateLimitedEndpoint,
    prefix: string,
    sendCommand: (...args: string[]) => Promise<RedisReply>,
    private readonly reporter: FailureReporter,
  ) {
    this.prefix = prefix;
    this.inner = new RedisStore({ prefix, sendCommand });
  }

  init(options: LimiterOptions): void {
    this.limiterOptions = options;
    // Loads in the background; a failure here is reported and retried on the next request.
    this.loadScripts().catch((err: unknown) => this.reporter.failure(err));
  }

  private loadScripts(): Promise<void> {
    const options = this.limiterOptions;
    if (this.scriptsLoaded || !options) return Promise.resolve();
    this.scripts ??= this.inner.init(options).then(
      () => {
        this.scriptsLoaded = true;
        this.scripts = undefined;
      },
      (err: unknown) => {
        this.scripts = undefined;
        throw err;
      },
    );
    return this.scripts;
  }

  private async guard<T>(op: () => Promise<T>): Promise<T> {
    try {
      await this.loadScripts();
      const result = await op();
      this.reporter.success();
      return result;
    } catch (err) {
      this.reporter.failure(err, this.endpoint);
      throw new ServiceUnavailableError('Rate limiting is temporarily unavailable');
    }
  }

  increment(key: string): Promise<IncrementResponse> {
    return this.guard(() => this.inner.increment(key));
  }

  get(key: string): Promise<ClientRateLimitInfo | undefined> {
    return this.guard(() => this.inner.get(key));
  }

  async decrement(key: string): Promise<void> {
    // Only used with skip*Requests; a lost decrement errs on the side of counting.
    await this.inner.decrement(key).catch((err: unknown) => this.reporter.failure(err));
  }

  resetKey(key: string): Promise<void> {
    return this.guard(() => this.inner.resetKey(key));
  }
}

function isRedisReply(value: unknown): value is RedisReply {
  const isData = (v: unknown): boolean => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
  return isData(value) || (Array.isArray(value) && value.every(isData));
}

/**
 * Builds the Redis client and the per-endpoint store factory. The client connects in the
 * background; until it is ready, checks fail (open or closed, as configured) rather than wait.
 */
export function createRedisRateLimitStore(options: RedisRateLimitStoreOptions): RedisRateLimitStore {
  const { logger } = options;
  const reporter = new FailureReporter(logger, options.onStoreError);
  const client = new Redis(options.url, {
    // A request never waits for Redis to come back: fail at once while disconnected...
    enableOfflineQueue: false,
    // ...and give up on a command after one reconnection attempt, or after a second.
    maxRetriesPerRequest: 1,
    commandTimeout: 1000,
    connectTimeout: options.connectTimeoutMs ?? 2000,
    // Keep reconnecting forever, backing off to one attempt a second.
    retryStrategy: (times) => Math.min(times * 100, 1000),
    lazyConnect: false,
  });
  // Without a listener ioredis prints every connection error to the console.
  client.on('error', (err: unknown) => reporter.failure(err));

  const sendCommand = async (...args: string[]): Promise<RedisReply> => {
    const [command, ...rest] = args;
    if (command === undefined) throw new Error('empty Redis command');
    const reply: unknown = await client.call(command, ...rest);
    // rate-limit-redis's scripts answer numbers, strings and nil (null); nil is "no value".
    const normalised = Array.isArray(reply) ? reply.map((v: unknown) => (v === null ? false : v)) : reply === null ? false : reply;
    if (!isRedisReply(normalised)) throw new TypeError('unexpected reply from Redis');
    return normalised;
  };

  const storeFactory: RateLimitStoreFactory = (endpoint) =>
    new ResilientRedisStore(endpoint, `${options.prefix}${endpoint}:`, sendCommand, reporter);

  // One window per address: created with its expiry by the first refusal, counted by each.
  const failureCounter: SharedFailureCounter = {
    increment: async (address) => {
      const key = `${options.prefix}failed-auth:${address}`;
      try {
        const replies = await client.multi().set(key, '0', 'PX', 60_000, 'NX').incr(key).pttl(key).exec();
        const count = Number(replies?.[1]?.[1]);
        const remainingMs = Number(replies?.[2]?.[1]);
        if (!Number.isFinite(count) || !Number.isFinite(remainingMs)) throw new TypeError('unexpected reply from Redis');
        reporter.success();
        return { count, remainingMs };
      } catch (err) {
        reporter.failure(err);
        throw err;
      }
    },
  };

  const ready = (timeoutMs: number): Promise<boolean> =>
    new Promise<boolean>((resolve) => {
      if (client.status === 'ready') {
        resolve(true);
        return;
      }
      const onReady = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        client.off('ready', onReady);
        resolve(false);
      }, timeoutMs);
      timer.unref();
      client.once('ready', onReady);
    });

  const close = async (): Promise<void> => {
    if (client.status === 'ready') {
      try {
        await client.quit();
        return;
      } catch {
        // fall through: drop the connection
      }
    }
    client.disconnect();
  };

  return { client, storeFactory, failureCounter, ready, close };
}
