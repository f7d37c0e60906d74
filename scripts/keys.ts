/**
 * `npm run keys -- <command>`: manage the key registry (`KEYS_FILE`, default `config/keys.json`).
 *
 *   add <id> [--user <user_id>] [--admin] [--limit /v1=120]... [--expires <ISO date-time>]
 *       Prints a new random key once on stdout and stores only its SHA-256 digest.
 *   list     Ids, bound users, admin flags, limits and expiry (no digests).
 *   remove <id>
 *
 * The file is validated with the proxy's own schema before and after every change and written
 * atomically with mode 0600. Run `kill -HUP <pid>` (or restart) for a running proxy to see it.
 * Two CLI runs at the same moment are not serialised: the last writer wins.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { writeKeysFile } from '../src/keys/file';
import { KeyRegistryError, keyDigestHex, parseKeysFile, readKeysFile, type KeyEntryJson, type KeysFileJson } from '../src/keys/registry';

export const KEY_PREFIX = 'mp_';
const DEFAULT_KEYS_FILE = path.join(__dirname, '..', 'config', 'keys.json');

export interface CliIo {
  env: Record<string, string | undefined>;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const USAGE = `usage:
  npm run keys -- add <id> [--user <user_id>] [--admin] [--limit </v1|/search|/list|/remember|/forget|/health>=<per minute>]... [--expires <ISO date-time>]
  npm run keys -- list
  npm run keys -- remove <id>
(the registry file is KEYS_FILE, default config/keys.json)`;

class UsageError extends Error {}

/** A new key: 32 random bytes, base64url, with a recognisable prefix (for secret scanners). */
export function generateKey(): string {
  return `${KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
}

function parseAdd(args: string[]): KeyEntryJson {
  const [id, ...rest] = args;
  if (id === undefined || id.startsWith('--')) throw new UsageError('add needs an id');
  const entry: KeyEntryJson = { id, sha256: '' };
  const limits: Record<string, number> = {};
  for (let i = 0; i < rest.length; i++) {
    const flag = rest[i];
    const value = (): string => {
      const v = rest[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--user':
        entry.user_id = value();
        break;
      case '--admin':
        entry.admin = true;
        break;
      case '--limit': {
        const spec = value();
        const match = /^(\/[a-z0-9]+)=(\d+)$/.exec(spec);
        if (!match?.[1] || !match[2]) throw new UsageError(`--limit takes <endpoint>=<per minute>, e.g. /v1=120 (got "${spec}")`);
        limits[match[1]] = Number(match[2]);
        break;
      }
      case '--expires':
        entry.expires_at = value();
        break;
      default:
        throw new UsageError(`unknown option "${flag ?? ''}"`);
    }
  }
  if (Object.keys(limits).length > 0) entry.limits = limits;
  return entry;
}

function describe(entry: KeyEntryJson, now: number): string {
  const expired = entry.expires_at !== undefined && Date.parse(entry.expires_at) <= now;
  const limits = Object.entries(entry.limits ?? {})
    .map(([p, n]) => `${p}=${n}`)
    .join(',');
  return [
    entry.id,
    `user=${entry.user_id ?? '-'}`,
    `admin=${entry.admin === true ? 'yes' : 'no'}`,
    `limits=${limits || '-'}`,
    `expires=${entry.expires_at ?? 'never'}${expired ? ' (expired)' : ''}`,
  ].join('\t');
}

/**
 * Runs one CLI command.
 * @returns the exit code (0 ok, 1 refused or failed, 2 usage error).
 */
export function main(argv: readonly string[], io: CliIo): number {
  const file = path.resolve(io.env.KEYS_FILE?.trim() || DEFAULT_KEYS_FILE);
  const [command, ...args] = argv;
  try {
    switch (command) {
      case 'add': {
        const entry = parseAdd(args);
        const current: KeysFileJson = readKeysFile(file) ?? { keys: [] };
        if (current.keys.some((k) => k.id === entry.id)) {
          io.stderr(`A key with id "${entry.id}" already exists in ${file}: remove it first or pick another id.\n`);
          return 1;
        }
        const key = generateKey();
        entry.sha256 = keyDigestHex(key);
        // Validate the whole new file with the proxy's schema before writing anything.
        const next = parseKeysFile({ keys: [...current.keys, entry] }, file);
        writeKeysFile(file, next);
        io.stdout(`${key}\n`);
        io.stderr(`Added key "${entry.id}" to ${file}. The key above is shown only once: store it now.\n`);
        return 0;
      }
      case 'list': {
        const current = readKeysFile(file);
        if (current === undefined) {
          io.stderr(`No key registry at ${file}.\n`);
          return 0;
        }
        const now = Date.now();
        for (const entry of current.keys) io.stdout(`${describe(entry, now)}\n`);
        return 0;
      }
      case 'remove': {
        const [id, ...extra] = args;
        if (id === undefined || extra.length > 0) throw new UsageError('remove takes exactly one id');
        const current = readKeysFile(file);
        if (current === undefined || !current.keys.some((k) => k.id === id)) {
          io.stderr(`No key with id "${id}" in ${file}.\n`);
          return 1;
        }
        writeKeysFile(file, { keys: current.keys.filter((k) => k.id !== id) });
        io.stderr(`Removed key "${id}" from ${file}. A running proxy drops it on SIGHUP.\n`);
        return 0;
      }
      default:
        throw new UsageError(command === undefined ? 'no command given' : `unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`${err.message}\n${USAGE}\n`);
      return 2;
    }
    if (err instanceof KeyRegistryError) {
      io.stderr(`${err.message}\n`);
      return 1;
    }
    io.stderr(`keys: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

if (require.main === module) {
  process.exitCode = main(process.argv.slice(2), {
    env: process.env,
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
  });
}
