// Runs before every test file: the memory engine must never call home from tests.
process.env.MEM0_TELEMETRY = 'false';
