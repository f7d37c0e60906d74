/** Jest runs the TypeScript sources directly through ts-jest (type checking is done once by `tsc --noEmit` in `npm test`). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { diagnostics: false }],
  },
  // src/ transpiled once into .test-build/ for child processes and engine threads (test/helpers/built.ts).
  globalSetup: '<rootDir>/test/setup/build-source.ts',
  setupFiles: ['<rootDir>/test/helpers/env.ts'],
  setupFilesAfterEnv: ['<rootDir>/test/helpers/log-scan.ts'],
  testTimeout: 20000,
  // Three suites at a time on this 2-core machine: most of a suite's time is spent waiting on
  // sockets, child processes and PostgreSQL (here 81 s against 123 s one at a time).
  maxWorkers: 3,
};
