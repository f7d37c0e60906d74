/**
 * `GET /ui`: the memory console's static files (built by `npm run build` into `dist/ui`).
 *
 * The page itself holds nothing secret, so it is served without authentication (a browser cannot
 * send a bearer token for a page load); everything it shows comes from the admin API, which the
 * page calls with the token the operator types in. Served with a strict CSP: scripts and styles
 * from this origin only, no inline script or style, no framing, no form posts, no other hosts.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { RequestHandler } from 'express';
import { NotFoundError, ServiceUnavailableError } from '../errors';

export const CONSOLE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Serves the files of `dir` under `/ui/`; index.html for `/ui` and `/ui/`. */
export function uiRoute(dir: string): RequestHandler {
  const cache = new Map<string, Buffer>();
  const read = (name: string): Buffer | undefined => {
    const cached = cache.get(name);
    if (cached) return cached;
    try {
      const data = fs.readFileSync(path.join(dir, name));
      cache.set(name, data);
      return data;
    } catch {
      return undefined;
    }
  };
  // Routed for GET (and HEAD) `/ui` and `/ui/<file>`.
  return (req, res, next) => {
    const rest = req.path.replace(/^\/ui\/?/, '');
    const name = rest === '' ? 'index.html' : rest;
    const type = TYPES[path.extname(name)];
    if (!FILE_NAME.test(name) || type === undefined) {
      next(new NotFoundError(`No console file ${req.path}`, 'No such endpoint'));
      return;
    }
    const data = read(name);
    if (!data) {
      if (name === 'index.html') {
        next(
          new ServiceUnavailableError(
            'The console is not built: run `npm run build`',
            'The memory console is not built (run npm run build)',
          ),
        );
      } else next(new NotFoundError(`No console file ${req.path}`, 'No such endpoint'));
      return;
    }
    res.setHeader('Content-Security-Policy', CONSOLE_CSP);
    res.setHeader('Cache-Control', 'no-cache');
    res.setHeader('Content-Type', type);
    res.setHeader('Content-Length', String(data.length));
    res.end(req.method === 'HEAD' ? undefined : data);
  };
}
