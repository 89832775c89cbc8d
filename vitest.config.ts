import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    // PGlite needs 1-4 s to boot a database, more while another file is busy on the other core.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Separate processes: PGlite's WASM heap and pg pools stay per file. CI has 2 cores.
    pool: "forks",
    maxWorkers: 2,
    fileParallelism: true,
  },
});
