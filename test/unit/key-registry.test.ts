/**
 * The key registry and the `keys` CLI: validation names each problem, expiry, reload semantics
 * (bad file keeps the old keys, missing file revokes all), the full constant-time scan, and the CLI
 * writing only digests, atomically, mode 0600.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main as keysCli, KEY_PREFIX } from '../../scripts/keys';
import { loadConfig } from '../../src/config';
import { combinedAuthenticator } from '../../src/keys/authenticator';
import { KeyRegistry, KeyRegistryError, keyDigestHex, readKeysFile } from '../../src/keys/registry';
import { captureLogger } from '../helpers/app';
import { TEST_AUTH_TOKEN, runtimeSecrets } from '../helpers/secrets';

const { logger, lines } = captureLogger(loadConfig({ env: { DEBUG: 'true' } }));
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keys-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
afterEach(() => jest.restoreAllMocks());

function newKey(): string {
  const key = `${KEY_PREFIX}${crypto.randomBytes(32).toString('base64url')}`;
  runtimeSecrets.push(key);
  return key;
}

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value));
}

function problemsOf(file: string): readonly string[] {
  try {
    KeyRegistry.load({ file, logger });
  } catch (err) {
    if (err instanceof KeyRegistryError) return err.problems;
    throw err;
  }
  throw new Error('expected a KeyRegistryError');
}

describe('validation at start', () => {
  it('treats a missing file as no registry', () => {
    expect(KeyRegistry.load({ file: path.join(dir, 'absent.json'), logger })).toBeUndefined();
    expect(combinedAuthenticator(undefined, undefined).required).toBe(false);
  });

  it('names every problem with its place in the file, never a value', () => {
    const file = path.join(dir, 'keys.json');
    writeJson(file, {
      keys: [
        { id: 'ok', sha256: 'a'.repeat(64) },
        { id: 'ok', sha256: 'b'.repeat(63) },
        { id: 'token', sha256: 'c'.repeat(64), limits: { '/nope': 3, '/v1': 0 } },
        { id: 'x', sha256: 'd'.repeat(64), expires_at: 'tomorrow', admin: 'yes', extra: 1 },
        { sha256: 'e'.repeat(64) },
      ],
    });
    const problems = problemsOf(file);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^keys\.1\.sha256: must be the 64 hex digits/),
        expect.stringMatching(/^keys\.2\.id: "token" is reserved/),
        expect.stringMatching(/^keys\.2\.limits\.\/nope: unknown endpoint/),
        expect.stringMatching(/^keys\.2\.limits\.\/v1: must be positive/),
        expect.stringMatching(/^keys\.3\.expires_at: must be an ISO 8601 date-time/),
        expect.stringMatching(/^keys\.3\.admin: /),
        expect.stringMatching(/^keys\.3: Unrecognized key/),
        expect.stringMatching(/^keys\.4\.id: Required/),
      ]),
    );
    // Duplicates are checked once the entries are well-formed.
    writeJson(file, {
      keys: [
        { id: 'a', sha256: 'a'.repeat(64) },
        { id: 'a', sha256: 'A'.repeat(64) },
      ],
    });
    expect(problemsOf(file)).toEqual(['keys.1.id: duplicate id "a"', 'keys.1.sha256: duplicate digest (two entries for one key)']);
  });

  it('refuses a file that is not JSON or not the right shape, naming the file', () => {
    const file = path.join(dir, 'keys.json');
    writeJson(file, '{"keys": [');
    expect(() => KeyRegistry.load({ file, logger })).toThrow(/Invalid key registry .*keys\.json:\n {2}- is not valid JSON/);
    writeJson(file, '[]');
    expect(problemsOf(file)).toEqual([expect.stringMatching(/^\(file\): Expected object/)]);
  });
});

describe('identify', () => {
  it('maps an entry to a key caller with its user, admin flag and per-endpoint limits', () => {
    const key = newKey();
    const file = path.join(dir, 'keys.json');
    writeJson(file, { keys: [{ id: 'app-1', sha256: keyDigestHex(key), user_id: 'alice', limits: { '/v1': 120, '/list': 7 } }] });
    const registry = KeyRegistry.load({ file, logger });
    expect(registry?.identify(key)).toEqual({ id: 'app-1', kind: 'key', userId: 'alice', admin: false, limits: { v1: 120, list: 7 } });
    expect(registry?.identify(`${key}x`)).toBeUndefined();
    expect(registry?.identify('')).toBeUndefined();
  });

  it('refuses a key from its expiry on', () => {
    const key = newKey();
    const file = path.join(dir, 'keys.json');
    writeJson(file, { keys: [{ id: 'temp', sha256: keyDigestHex(key), expires_at: '2030-01-01T00:00:00+02:00' }] });
    let now = Date.parse('2029-12-31T21:59:59Z');
    const registry = KeyRegistry.load({ file, logger, now: () => now });
    expect(registry?.identify(key)?.id).toBe('temp');
    now = Date.parse('2029-12-31T22:00:00Z');
    expect(registry?.identify(key)).toBeUndefined();
  });

  it('compares the digest against every entry, whether or not and wherever it matches', () => {
    const keys = [newKey(), newKey(), newKey(), newKey()];
    const file = path.join(dir, 'keys.json');
    writeJson(file, { keys: keys.map((k, i) => ({ id: `k${i}`, sha256: keyDigestHex(k) })) });
    const registry = KeyRegistry.load({ file, logger });
    const spy = jest.spyOn(crypto, 'timingSafeEqual');
    for (const presented of [keys[0] ?? '', keys[3] ?? '', 'unknown-key']) {
      spy.mockClear();
      registry?.identify(presented);
      expect(spy).toHaveBeenCalledTimes(keys.length);
    }
  });

  it('accepts AUTH_TOKEN (admin) and registry keys together, and requires one of them', () => {
    const key = newKey();
    const file = path.join(dir, 'keys.json');
    writeJson(file, { keys: [{ id: 'app', sha256: keyDigestHex(key), user_id: 'bob' }] });
    const auth = combinedAuthenticator(TEST_AUTH_TOKEN, KeyRegistry.load({ file, logger }));
    expect(auth.required).toBe(true);
    expect(auth.identify(TEST_AUTH_TOKEN)).toMatchObject({ id: 'token', admin: true });
    expect(auth.identify(key)).toMatchObject({ id: 'app', userId: 'bob', admin: false });
    expect(auth.identify('nope')).toBeUndefined();
    // A registry alone (no AUTH_TOKEN) still requires authentication.
    expect(combinedAuthenticator(undefined, KeyRegistry.load({ file, logger })).required).toBe(true);
  });
});

describe('reload', () => {
  it('applies a good file, keeps the old keys on a bad one (logging why), and revokes all when the file is gone', () => {
    const [a, b] = [newKey(), newKey()];
    const file = path.join(dir, 'keys.json');
    writeJson(file, {
      keys: [
        { id: 'a', sha256: keyDigestHex(a) },
        { id: 'b', sha256: keyDigestHex(b) },
      ],
    });
    const registry = KeyRegistry.load({ file, logger });
    if (!registry) throw new Error('no registry');

    writeJson(file, { keys: [{ id: 'a', sha256: keyDigestHex(a) }] });
    expect(registry.reload()).toEqual({ ok: true, count: 1, problems: [] });
    expect(registry.identify(b)).toBeUndefined();

    writeJson(file, { keys: [{ id: 'a', sha256: 'zz' }] });
    const failed = registry.reload();
    expect(failed.ok).toBe(false);
    expect(failed.problems).toEqual([expect.stringMatching(/^keys\.0\.sha256: /)]);
    expect(registry.identify(a)?.id).toBe('a');
    expect(lines.some((l) => l.includes('key registry not reloaded') && l.includes('keys.0.sha256'))).toBe(true);

    fs.rmSync(file);
    expect(registry.reload()).toEqual({ ok: true, count: 0, problems: [] });
    expect(registry.identify(a)).toBeUndefined();
  });
});

describe('keys CLI', () => {
  function run(argv: string[], file: string): { code: number; out: string; err: string } {
    let out = '';
    let err = '';
    const code = keysCli(argv, { env: { KEYS_FILE: file }, stdout: (t) => (out += t), stderr: (t) => (err += t) });
    return { code, out, err };
  }

  it('adds a key: prints it once, stores only its digest, atomically with mode 0600', () => {
    const file = path.join(dir, 'sub', 'keys.json');
    const added = run(
      ['add', 'app-1', '--user', 'alice', '--limit', '/v1=120', '--limit', '/list=5', '--expires', '2031-01-01T00:00:00Z'],
      file,
    );
    expect(added.code).toBe(0);
    const key = added.out.trim();
    runtimeSecrets.push(key);
    expect(key).toMatch(/^mp_[A-Za-z0-9_-]{43}$/);
    expect(added.err).not.toContain(key);
    const text = fs.readFileSync(file, 'utf8');
    expect(text).not.toContain(key);
    expect(JSON.parse(text)).toEqual({
      keys: [
        {
          id: 'app-1',
          sha256: keyDigestHex(key),
          user_id: 'alice',
          limits: { '/v1': 120, '/list': 5 },
          expires_at: '2031-01-01T00:00:00Z',
        },
      ],
    });
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(path.dirname(file))).toEqual(['keys.json']);
    // The proxy's registry accepts what the CLI wrote.
    expect(KeyRegistry.load({ file, logger })?.identify(key)).toMatchObject({ id: 'app-1', userId: 'alice', limits: { v1: 120, list: 5 } });
  });

  it('keeps other entries, refuses a duplicate id or a bad option, lists without digests, and removes', () => {
    const file = path.join(dir, 'keys.json');
    writeJson(file, { keys: [{ id: 'hand-written', sha256: 'a'.repeat(64), admin: true }] });
    const first = run(['add', 'app-1', '--admin'], file);
    expect(first.code).toBe(0);
    runtimeSecrets.push(first.out.trim());
    expect(readKeysFile(file)?.keys.map((k) => k.id)).toEqual(['hand-written', 'app-1']);

    const dup = run(['add', 'app-1'], file);
    expect(dup).toMatchObject({ code: 1, out: '' });
    expect(dup.err).toContain('already exists');
    expect(run(['add', 'x', '--limit', '/nope=3'], file)).toMatchObject({ code: 1, out: '' });
    expect(run(['add', 'y', '--expires', 'soon'], file).err).toMatch(/expires_at: must be an ISO 8601/);
    expect(run(['add'], file).code).toBe(2);
    expect(run(['frobnicate'], file).code).toBe(2);
    expect(readKeysFile(file)?.keys.map((k) => k.id)).toEqual(['hand-written', 'app-1']);

    const listed = run(['list'], file);
    expect(listed.code).toBe(0);
    expect(listed.out.split('\n').filter(Boolean)).toEqual([
      'hand-written\tuser=-\tadmin=yes\tlimits=-\texpires=never',
      'app-1\tuser=-\tadmin=yes\tlimits=-\texpires=never',
    ]);
    expect(listed.out).not.toContain('a'.repeat(64));

    expect(run(['remove', 'hand-written'], file).code).toBe(0);
    expect(run(['remove', 'hand-written'], file).code).toBe(1);
    expect(readKeysFile(file)?.keys.map((k) => k.id)).toEqual(['app-1']);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  });

  it('refuses to change a registry file that is invalid', () => {
    const file = path.join(dir, 'keys.json');
    writeJson(file, '{"keys": 3}');
    const res = run(['add', 'app-1'], file);
    expect(res).toMatchObject({ code: 1, out: '' });
    expect(res.err).toContain('keys: Expected array');
    expect(fs.readFileSync(file, 'utf8')).toBe('{"keys": 3}');
  });
});
