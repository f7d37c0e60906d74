# mem0-proxy: multi-stage image. The build stages carry the compilers better-sqlite3 (a native
# module) needs; the runtime stage has Node, the compiled JavaScript and production dependencies only.

# ---- build: all dependencies, compile TypeScript to dist/
FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY ui ./ui
COPY scripts/build-ui.mjs ./scripts/
RUN npm run build

# ---- deps: production dependencies only, native modules built here
FROM node:20-bookworm-slim AS deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# ---- runtime
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8000 \
    DATA_DIR=/data \
    MEM0_TELEMETRY=false
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config/defaults.json config/keys.example.json ./config/
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8000
# /readyz: no token and no rate limit; 503 once shutdown begins or without an upstream key (memory
# being down does not count). Its Host is the first ALLOWED_HOSTS name, so the Host check passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "const h=(process.env.ALLOWED_HOSTS||'').split(',').map(s=>s.trim()).find(s=>s&&s!=='*');require('http').get({host:'127.0.0.1',port:process.env.SERVER_PORT||8000,path:'/readyz',headers:h?{host:h.includes(':')?'['+h+']':h}:{}},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"]
CMD ["node", "dist/index.js"]
