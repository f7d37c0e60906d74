/**
 * The deployment files, checked without a Docker engine: docker-compose.yml passes the proxy only
 * variables the configuration knows, wires services, ports, volumes and healthchecks, and the
 * Dockerfile starts the process the way `npm start` does.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { ENV_VARIABLES } from '../../src/config';

const ROOT = path.resolve(__dirname, '..', '..');
const read = (file: string): string => fs.readFileSync(path.join(ROOT, file), 'utf8');

type Json = Record<string, unknown>;
const obj = (v: unknown): Json => {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error(`expected a mapping, got ${JSON.stringify(v)}`);
  return v as Json;
};

/** Compose's `environment` as a map, from either the mapping or the `KEY=value` list form. */
function environmentOf(service: Json): Record<string, string> {
  const env = service.environment;
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((e) => {
      const [k, ...v] = String(e).split('=');
      return [k ?? '', v.join('=')];
    }));
  }
  return Object.fromEntries(Object.entries(obj(env ?? {})).map(([k, v]) => [k, String(v)]));
}

/** The Dockerfile's instructions (continuation lines joined), comments dropped. */
function dockerfileInstructions(): Array<{ op: string; args: string }> {
  const joined = read('Dockerfile').replace(/\\\r?\n/g, ' ');
  return joined
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const m = /^(\S+)\s*(.*)$/.exec(l);
      return { op: (m?.[1] ?? '').toUpperCase(), args: m?.[2] ?? '' };
    });
}

describe('docker-compose.yml', () => {
  const compose = obj(parse(read('docker-compose.yml')));
  const services = obj(compose.services);
  const proxy = obj(services.proxy);

  it('defines the proxy, redis and postgres (pgvector) services', () => {
    expect(Object.keys(services).sort()).toEqual(['postgres', 'proxy', 'redis']);
    expect(obj(services.redis).image).toMatch(/^redis:7-alpine$/);
    expect(obj(services.postgres).image).toBe('pgvector/pgvector:pg16');
    expect(proxy.build).toBeDefined();
    expect(proxy.env_file).toBe('.env');
  });

  it('passes the proxy only variables the configuration reads', () => {
    const env = environmentOf(proxy);
    expect(Object.keys(env).length).toBeGreaterThan(0);
    for (const name of Object.keys(env)) expect(ENV_VARIABLES).toContain(name);
  });

  it('points the proxy at the redis and postgres services', () => {
    const env = environmentOf(proxy);
    expect(env.REDIS_URL).toBe('redis://redis:6379');
    expect(env.MEMORY_BACKEND).toBe('pgvector');
    expect(env.SERVER_HOST).toBe('0.0.0.0');
    const db = new URL((env.DATABASE_URL ?? '').replace(/\$\{[^}]*\}/g, 'pw'));
    expect(db.protocol).toBe('postgres:');
    expect(db.hostname).toBe('postgres');
    expect(db.port).toBe('5432');
    // The database the proxy uses is the one postgres creates.
    const pg = obj(obj(services.postgres).environment);
    expect(db.pathname).toBe(`/${String(pg.POSTGRES_DB)}`);
    expect(db.username).toBe(String(pg.POSTGRES_USER));
  });

  it('publishes the proxy port the Dockerfile exposes and keeps data in named volumes', () => {
    expect(proxy.ports).toEqual(['8000:8000']);
    const volumes = obj(compose.volumes);
    const mounts = [proxy, obj(services.postgres)].flatMap((s) => (s.volumes as unknown[] | undefined) ?? []).map(String);
    expect(mounts).toContain('proxy-data:/data');
    expect(mounts).toContain('postgres-data:/var/lib/postgresql/data');
    for (const m of mounts) expect(Object.keys(volumes)).toContain(m.split(':')[0]);
    expect(environmentOf(proxy).DATA_DIR).toBe('/data');
  });

  it('gives every service a healthcheck and starts the proxy once its dependencies are healthy', () => {
    for (const [name, service] of Object.entries(services)) {
      const test = obj(obj(service).healthcheck).test;
      expect({ name, test: Array.isArray(test) && test.length > 1 }).toEqual({ name, test: true });
    }
    expect(proxy.depends_on).toEqual({ redis: { condition: 'service_healthy' }, postgres: { condition: 'service_healthy' } });
    expect(JSON.stringify(obj(proxy.healthcheck).test)).toContain('/health');
    expect(JSON.stringify(obj(proxy.healthcheck).test)).toContain('AUTH_TOKEN');
  });
});

describe('Dockerfile', () => {
  const instructions = dockerfileInstructions();
  const all = (op: string): string[] => instructions.filter((i) => i.op === op).map((i) => i.args);
  const runtime = instructions.slice(instructions.map((i) => i.op).lastIndexOf('FROM'));
  const inRuntime = (op: string): string[] => runtime.filter((i) => i.op === op).map((i) => i.args);

  it('starts the process the way `npm start` does', () => {
    const pkg = obj(JSON.parse(read('package.json')));
    const start = String(obj(pkg.scripts).start);
    const cmd = inRuntime('CMD');
    expect(cmd).toHaveLength(1);
    const argv = JSON.parse(cmd[0] ?? '[]') as string[];
    expect(argv.join(' ')).toBe(start);
    expect(start).toBe('node dist/index.js');
  });

  it('builds in one stage and runs production dependencies as a non-root user', () => {
    expect(all('FROM').length).toBeGreaterThanOrEqual(2);
    expect(all('RUN').some((r) => r.includes('npm ci') && !r.includes('--omit=dev'))).toBe(true);
    expect(all('RUN').some((r) => r.includes('npm run build'))).toBe(true);
    expect(all('RUN').some((r) => r.includes('npm ci --omit=dev'))).toBe(true);
    expect(inRuntime('RUN').some((r) => r.includes('npm ci'))).toBe(false);
    const user = inRuntime('USER');
    expect(user).toHaveLength(1);
    expect(user[0]).not.toMatch(/^(root|0)$/);
  });

  it('listens on 0.0.0.0:8000 with DATA_DIR=/data as a volume and a /health healthcheck', () => {
    expect(inRuntime('EXPOSE')).toEqual(['8000']);
    const env = inRuntime('ENV').join(' ');
    expect(env).toMatch(/SERVER_HOST=0\.0\.0\.0/);
    expect(env).toMatch(/DATA_DIR=\/data/);
    for (const [name] of env.matchAll(/\b([A-Z][A-Z0-9_]+)=/g)) {
      const variable = name.slice(0, -1);
      if (variable !== 'NODE_ENV') expect(ENV_VARIABLES).toContain(variable);
    }
    expect(inRuntime('VOLUME').join(' ')).toContain('/data');
    const health = inRuntime('HEALTHCHECK').join(' ');
    expect(health).toContain('/health');
    expect(health).toContain('AUTH_TOKEN');
    expect(health).not.toContain('curl');
  });
});
