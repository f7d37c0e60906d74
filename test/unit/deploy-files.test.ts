/**
 * The deployment files, checked without a Docker engine or a cluster: docker-compose.yml passes the
 * proxy only variables the configuration knows, wires services, ports, volumes and healthchecks,
 * and starts without a .env; the Dockerfile starts the process the way `npm start` does; the
 * Kubernetes manifests set only variables the proxy reads, probe paths the app serves (with a Host
 * it accepts) on the port it listens on, and give shutdown the time it takes.
 */
import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { parse } from 'yaml';
import { ENV_VARIABLES, loadConfig } from '../../src/config';
import { buildTestApp } from '../helpers/app';
import { TEST_AUTH_TOKEN, TEST_DB_PASSWORD, TEST_OPENAI_KEY } from '../helpers/secrets';

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
    return Object.fromEntries(
      env.map((e) => {
        const [k, ...v] = String(e).split('=');
        return [k ?? '', v.join('=')];
      }),
    );
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
  });

  it('reads .env when there is one, and starts without it', () => {
    expect(proxy.env_file).toEqual([{ path: '.env', required: false }]);
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
    // The same check as the image's: /readyz, which needs no token and counts against no limit.
    const test = obj(proxy.healthcheck).test as string[];
    expect(test.slice(0, 3)).toEqual(['CMD', 'node', '-e']);
    expect(test[3]).toContain("path:'/readyz'");
    expect(test[3]).not.toContain('AUTH_TOKEN');
    const image = dockerfileInstructions().find((i) => i.op === 'HEALTHCHECK')?.args ?? '';
    expect(['CMD', ...(JSON.parse(image.slice(image.indexOf('CMD ') + 4)) as string[])]).toEqual(test);
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

  it('listens on 0.0.0.0:8000 with DATA_DIR=/data as a volume and a /readyz healthcheck', () => {
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
    expect(health).toContain("path:'/readyz'");
    expect(health).not.toContain('AUTH_TOKEN');
    expect(health).not.toContain('curl');
  });
});

describe('deploy/kubernetes', () => {
  const DIR = 'deploy/kubernetes';
  const manifest = (file: string): Json => obj(parse(read(`${DIR}/${file}`)));
  const configMap = manifest('configmap.yaml');
  const secret = manifest('secret.example.yaml');
  const deployment = manifest('deployment.yaml');
  const service = manifest('service.yaml');
  const podTemplate = obj(obj(deployment.spec).template);
  const pod = obj(podTemplate.spec);
  const containers = pod.containers as Json[];
  const container = obj(containers[0]);
  const env = Object.fromEntries(Object.entries(obj(configMap.data)).map(([k, v]) => [k, String(v)]));
  const port = obj((container.ports as unknown[])[0]);
  const probes = { startup: obj(container.startupProbe), liveness: obj(container.livenessProbe), readiness: obj(container.readinessProbe) };
  const probeHost = (probe: Json): string | undefined =>
    ((obj(probe.httpGet).httpHeaders as Array<{ name: string; value: string }> | undefined) ?? []).find(
      (h) => h.name.toLowerCase() === 'host',
    )?.value;
  /** Real values in place of the template's placeholders. */
  const secrets = {
    OPENAI_API_KEY: TEST_OPENAI_KEY,
    AUTH_TOKEN: TEST_AUTH_TOKEN,
    DATABASE_URL: `postgres://mem0:${TEST_DB_PASSWORD}@postgres:5432/mem0`,
  };

  it('lists every manifest in the kustomization but the Secret template', () => {
    const resources = obj(parse(read(`${DIR}/kustomization.yaml`))).resources as string[];
    for (const file of resources) expect(fs.existsSync(path.join(ROOT, DIR, file))).toBe(true);
    const manifests = fs.readdirSync(path.join(ROOT, DIR)).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
    expect([...resources, 'secret.example.yaml'].sort()).toEqual(manifests.sort());
  });

  it('sets only variables the proxy reads, from the ConfigMap and the Secret the pods load', () => {
    const secretKeys = Object.keys(obj(secret.stringData));
    const containerEnv = ((container.env as Array<{ name: string }> | undefined) ?? []).map((e) => e.name);
    expect(secretKeys.sort()).toEqual(['AUTH_TOKEN', 'DATABASE_URL', 'OPENAI_API_KEY']);
    for (const name of [...Object.keys(env), ...secretKeys, ...containerEnv]) expect(ENV_VARIABLES).toContain(name);
    // Secrets stay out of the ConfigMap.
    for (const name of ['OPENAI_API_KEY', 'AUTH_TOKEN', 'ANTHROPIC_API_KEY', 'DATABASE_URL', 'MEM0_API_KEY', 'QDRANT_API_KEY'])
      expect(Object.keys(env)).not.toContain(name);
    expect(container.envFrom).toEqual([
      { configMapRef: { name: obj(configMap.metadata).name } },
      { secretRef: { name: obj(secret.metadata).name } },
    ]);
  });

  it("makes a valid configuration listening on the container port, and the template's placeholders are refused", () => {
    const config = loadConfig({ env: { ...env, ...secrets } });
    expect(config.server).toMatchObject({ host: '0.0.0.0', port: port.containerPort });
    expect(config.memory.backend).toBe('pgvector');
    expect(config.dataDir).toBe('/data');
    expect(port.containerPort).toBe(8000);
    const placeholders = Object.fromEntries(Object.entries(obj(secret.stringData)).map(([k, v]) => [k, String(v)]));
    expect(() => loadConfig({ env: { ...env, ...placeholders } })).toThrow(/AUTH_TOKEN[\s\S]*DATABASE_URL|DATABASE_URL[\s\S]*AUTH_TOKEN/);
  });

  it("runs 2 replicas of mem0-proxy:latest as the image's user, read-only but for DATA_DIR and /tmp", () => {
    expect(obj(deployment.spec).replicas).toBe(2);
    expect(containers).toHaveLength(1);
    expect(container.image).toBe('mem0-proxy:latest');
    // The Dockerfile's `USER node` is uid 1000 in the node images.
    const runtime = dockerfileInstructions();
    expect(runtime.filter((i) => i.op === 'USER').map((i) => i.args)).toEqual(['node']);
    expect(obj(pod.securityContext)).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000 });
    expect(obj(container.securityContext)).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    const mounts = Object.fromEntries(
      (container.volumeMounts as Array<{ name: string; mountPath: string }>).map((m) => [m.mountPath, m.name]),
    );
    const volumes = Object.fromEntries((pod.volumes as Json[]).map((v) => [String(v.name), v]));
    for (const mountPath of [env.DATA_DIR ?? '', '/tmp']) {
      const volume = volumes[mounts[mountPath] ?? ''];
      expect({ mountPath, emptyDir: volume?.emptyDir !== undefined }).toEqual({ mountPath, emptyDir: true });
    }
    expect(obj(container.resources).requests).toBeDefined();
    expect(obj(obj(container.resources).limits).memory).toBeDefined();
  });

  it('probes /livez and /readyz on the container port with a Host that ALLOWED_HOSTS names, and the app answers them', async () => {
    expect(obj(probes.startup.httpGet).path).toBe('/livez');
    expect(obj(probes.liveness.httpGet).path).toBe('/livez');
    expect(obj(probes.readiness.httpGet).path).toBe('/readyz');
    const allowed = (env.ALLOWED_HOSTS ?? '').split(',').map((h) => h.trim());
    for (const probe of Object.values(probes)) {
      expect([port.name, port.containerPort]).toContain(obj(probe.httpGet).port);
      expect(allowed).toContain(probeHost(probe));
    }
    // The app built from this configuration (memory and the save queue on this machine) answers
    // each probe with the Host it sends.
    const { DATA_DIR: _dataDir, MEMORY_BACKEND: _backend, ...rest } = env;
    const t = await buildTestApp({ ...rest, OPENAI_API_KEY: TEST_OPENAI_KEY, AUTH_TOKEN: TEST_AUTH_TOKEN }, { startQueue: false });
    try {
      for (const probe of Object.values(probes)) {
        await request(t.app)
          .get(String(obj(probe.httpGet).path))
          .set('Host', `${probeHost(probe) ?? ''}:${String(port.containerPort)}`)
          .expect(200);
      }
    } finally {
      await t.close();
    }
  });

  it('gives shutdown the time it takes: preStop sleep, the drain, the save queue and the engine', () => {
    const preStop = obj(obj(obj(container.lifecycle).preStop).exec).command as string[];
    expect(preStop[0]).toBe('sleep');
    const sleep = Number(preStop[1]);
    const grace = /const SHUTDOWN_GRACE_MS = ([\d_]+);/.exec(read('src/index.ts'))?.[1];
    expect(grace).toBeDefined();
    // In-flight requests (SHUTDOWN_GRACE_MS), then running saves and the engine's close (10 s each at most).
    const needed = sleep + Number(grace?.replace(/_/g, '')) / 1000 + 20;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(needed);
  });

  it('exposes the container port through the Service, selecting the pods', () => {
    const spec = obj(service.spec);
    const labels = obj(obj(podTemplate.metadata).labels);
    for (const [k, v] of Object.entries(obj(spec.selector))) expect(labels[k]).toBe(v);
    const [servicePort] = spec.ports as Json[];
    expect([port.name, port.containerPort]).toContain(obj(servicePort).targetPort);
    // The probes' Host is the Service's name.
    expect(probeHost(probes.readiness)).toBe(obj(service.metadata).name);
  });
});
