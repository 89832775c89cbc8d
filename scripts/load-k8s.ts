// `npm run load:k8s`: the load runner (services/loadtest) as a Job inside the cluster, aimed at
// the gateway Service, in Paygate's own image (the gateway Deployment's, unless --image).
//
//   npm run load:k8s -- --script csv --vus 4 --duration 30s
//   npm run load:k8s -- --script rest --vus 8 --duration 1m --thresholds 'p(95)<500'
//   npm run load:k8s -- --script my-mix.mjs --release paygate --namespace paygate
//
// It creates a ConfigMap holding the CSV (csv script) or the script module (when one is given),
// a Secret when an API key is given, and the Job; streams the Job's log; waits for it; deletes all of it
// (and the Job's pod); and exits with the runner's exit code: 0, 99 when a threshold failed.
// 2: bad options (nothing created); 1: the run could not be made (no Service, no pod, timeout);
// 130: interrupted (Ctrl-C), after the cleanup.
// The runner's own variables set here (TX_ID, CUSTOMER_ID, DESTINATION, CURRENCY, AMOUNT,
// API_KEY, ITERATIONS, THRESHOLDS) are passed to the Job. KUBECONFIG picks the cluster.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as k8s from "@kubernetes/client-node";
import { parseDuration, parseParams, UsageError } from "../services/loadtest/params.js";
import { loadPlan } from "../services/loadtest/script.js";

const USAGE = `usage: npm run load:k8s -- [--script NAME|FILE] [--vus N] [--duration 30s] [options]
  --script NAME|FILE   connect-json (default), rest, csv, grpc, or a script module (.mjs/.js)
  --vus N              payments in flight at once (default 4)
  --duration D         how long to send (default 30s)
  --iterations N       at most this many payments
  --thresholds LIST    e.g. "error_rate<0.01,p(95)<1000" (default: the runner's)
  --csv FILE           the CSV the csv script sends (default tests/data/dummy_transactions.csv)
  --release NAME       the chart's release (default paygate): its gateway Service is the target
  --namespace NS       where the release runs, and the Job with it (default paygate)
  --image IMAGE        the image to run (default: the gateway Deployment's, i.e. Paygate's own)
  --context NAME       the kubeconfig context to use (default: the current one)
  --timeout S          give up after so many seconds (default: the duration + 300)
exit codes: the runner's (0, 99 thresholds failed); 2 bad options; 1 the run could not be made;
130 interrupted. Everything created is deleted in every case.`;

/** The runner's variables passed from this environment to the Job (PAYMENTS and CSV_PATH are set here). */
const FORWARDED_ENV = ["TX_ID", "CUSTOMER_ID", "DESTINATION", "CURRENCY", "AMOUNT", "ITERATIONS", "THRESHOLDS"];
const MOUNT = "/load";
/** A ConfigMap holds at most 1 MiB; leave room for its metadata. */
const MAX_FILES_BYTES = 900 * 1024;
const LABELS = { "app.kubernetes.io/name": "paygate-load", "app.kubernetes.io/component": "load", "app.kubernetes.io/part-of": "paygate", "app.kubernetes.io/managed-by": "paygate-load-k8s" };

export interface LoadJobOptions {
  name: string;
  namespace: string;
  image: string;
  imagePullPolicy: string;
  /** The gateway Service, e.g. http://paygate-gateway.paygate.svc.cluster.local:8080. */
  target: string;
  /** The runner's variables (SCRIPT, VUS, DURATION, CSV_PATH, …) but PAYMENTS and API_KEY. */
  env: Record<string, string>;
  /** Files the run reads (the CSV, a script module), by name: a ConfigMap mounted at /load. */
  files: Record<string, string>;
  apiKey?: string;
  activeDeadlineSeconds: number;
}

/**
 * The objects of one run: the Job, a ConfigMap with the files when the run reads any, a Secret
 * with the API key when one is given.
 */
export function loadJobObjects(o: LoadJobOptions): { configMap?: k8s.V1ConfigMap; secret?: k8s.V1Secret; job: k8s.V1Job } {
  const labels = { ...LABELS, "app.kubernetes.io/instance": o.name };
  const metadata = { name: o.name, namespace: o.namespace, labels };
  const hasFiles = Object.keys(o.files).length > 0;
  const env: k8s.V1EnvVar[] = [
    { name: "PAYMENTS", value: o.target },
    ...Object.entries(o.env).map(([name, value]) => ({ name, value })),
    ...(o.apiKey ? [{ name: "API_KEY", valueFrom: { secretKeyRef: { name: o.name, key: "API_KEY" } } }] : []),
  ];
  const job: k8s.V1Job = {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata,
    spec: {
      // One attempt: a second would pay again under other ids and blur the figures.
      backoffLimit: 0,
      activeDeadlineSeconds: o.activeDeadlineSeconds,
      // Deleted by load:k8s at the end; this only covers a launcher that died on the way.
      ttlSecondsAfterFinished: 600,
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: "Never",
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 5,
          // As the chart's pods: the restricted Pod Security Standard.
          securityContext: { runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, seccompProfile: { type: "RuntimeDefault" } },
          containers: [
            {
              name: "load",
              image: o.image,
              imagePullPolicy: o.imagePullPolicy,
              command: ["node", "dist/services/loadtest/main.js"],
              env,
              resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "512Mi" } },
              securityContext: {
                allowPrivilegeEscalation: false,
                privileged: false,
                readOnlyRootFilesystem: true,
                runAsNonRoot: true,
                runAsUser: 10001,
                runAsGroup: 10001,
                capabilities: { drop: ["ALL"] },
                seccompProfile: { type: "RuntimeDefault" },
              },
              volumeMounts: [...(hasFiles ? [{ name: "load", mountPath: MOUNT, readOnly: true }] : []), { name: "tmp", mountPath: "/tmp" }],
            },
          ],
          volumes: [...(hasFiles ? [{ name: "load", configMap: { name: o.name } }] : []), { name: "tmp", emptyDir: {} }],
        },
      },
    },
  };
  return {
    ...(hasFiles ? { configMap: { apiVersion: "v1", kind: "ConfigMap", metadata, data: o.files } } : {}),
    ...(o.apiKey ? { secret: { apiVersion: "v1", kind: "Secret", metadata, type: "Opaque", stringData: { API_KEY: o.apiKey } } } : {}),
    job,
  };
}

/** The calls cleanup makes: a subset of CoreV1Api and BatchV1Api, so a test can stand in. */
export interface CleanupApi {
  deleteNamespacedJob(p: { name: string; namespace: string; propagationPolicy: string }): Promise<unknown>;
  deleteCollectionNamespacedPod(p: { namespace: string; labelSelector: string }): Promise<unknown>;
  deleteNamespacedConfigMap(p: { name: string; namespace: string }): Promise<unknown>;
  deleteNamespacedSecret(p: { name: string; namespace: string }): Promise<unknown>;
  listNamespacedPod(p: { namespace: string; labelSelector: string }): Promise<{ items: unknown[] }>;
}

const isNotFound = (err: unknown) => err instanceof k8s.ApiException && err.code === 404;

/** An API error in one line: its HTTP code and the Status message the server sent. */
function describe(err: unknown): string {
  if (err instanceof k8s.ApiException) {
    const body: unknown = err.body;
    const message = typeof body === "object" && body !== null && "message" in body ? `: ${String(body.message)}` : "";
    return `HTTP ${err.code}${message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

/**
 * Deletes what a run created (the Job, its pods, the ConfigMap, the Secret), each whether or
 * not the others could be, and waits until no pod of the run is left. Returns what it could
 * not delete (empty when all is gone); an object already gone counts as deleted.
 */
export async function cleanup(api: CleanupApi, namespace: string, name: string, hasSecret: boolean, waitMs = 60_000): Promise<string[]> {
  const labelSelector = `app.kubernetes.io/managed-by=paygate-load-k8s,app.kubernetes.io/instance=${name}`;
  const problems: string[] = [];
  const attempt = async (what: string, call: () => Promise<unknown>) => {
    try {
      await call();
    } catch (err) {
      if (!isNotFound(err)) problems.push(`${what}: ${describe(err)}`);
    }
  };
  await attempt(`job/${name}`, () => api.deleteNamespacedJob({ name, namespace, propagationPolicy: "Background" }));
  await attempt(`pods of ${name}`, () => api.deleteCollectionNamespacedPod({ namespace, labelSelector }));
  await attempt(`configmap/${name}`, () => api.deleteNamespacedConfigMap({ name, namespace }));
  if (hasSecret) await attempt(`secret/${name}`, () => api.deleteNamespacedSecret({ name, namespace }));
  const deadline = Date.now() + waitMs;
  for (;;) {
    let left: number;
    try {
      left = (await api.listNamespacedPod({ namespace, labelSelector })).items.length;
    } catch (err) {
      problems.push(`pods of ${name}: ${describe(err)}`);
      break;
    }
    if (left === 0) break;
    if (Date.now() > deadline) {
      problems.push(`${left} pod(s) of ${name} still there after ${waitMs / 1000} s`);
      break;
    }
    await sleep(500);
  }
  return problems;
}

/** The runner's exit code from its pod, once it has ended; undefined before. */
export function exitCodeOf(pod: k8s.V1Pod | undefined): number | undefined {
  return pod?.status?.containerStatuses?.find((c) => c.name === "load")?.state?.terminated?.exitCode;
}

/** The chart's base name for a release (its `paygate.fullname`). */
export function chartFullname(release: string): string {
  return (release.includes("paygate") ? release : `${release}-paygate`).slice(0, 40).replace(/-+$/, "");
}

class RunError extends Error {}

export interface Options {
  script: string;
  vus: string;
  duration: string;
  iterations?: string;
  thresholds?: string;
  csv: string;
  release: string;
  namespace: string;
  image?: string;
  context?: string;
  timeoutS?: number;
}

function parseOptions(argv: string[]): Options {
  let values: Record<string, string | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        script: { type: "string" },
        vus: { type: "string" },
        duration: { type: "string" },
        iterations: { type: "string" },
        thresholds: { type: "string" },
        csv: { type: "string" },
        release: { type: "string" },
        namespace: { type: "string" },
        image: { type: "string" },
        context: { type: "string" },
        timeout: { type: "string" },
      },
      strict: true,
    }) as { values: Record<string, string | undefined> });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const dns = (v: string, name: string) => {
    if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(v)) throw new UsageError(`${name}: expected a Kubernetes name (lower-case letters, digits, -), got ${JSON.stringify(v)}`);
    return v;
  };
  const timeout = values.timeout;
  if (timeout !== undefined && (!/^\d+$/.test(timeout) || Number(timeout) < 10 || Number(timeout) > 7200)) throw new UsageError(`--timeout: expected seconds from 10 to 7200, got ${JSON.stringify(timeout)}`);
  return {
    script: values.script ?? process.env.SCRIPT ?? "connect-json",
    vus: values.vus ?? process.env.VUS ?? "4",
    duration: values.duration ?? process.env.DURATION ?? "30s",
    iterations: values.iterations,
    thresholds: values.thresholds,
    csv: values.csv ?? process.env.CSV_PATH ?? "tests/data/dummy_transactions.csv",
    release: dns(values.release ?? "paygate", "--release"),
    namespace: dns(values.namespace ?? "paygate", "--namespace"),
    image: values.image,
    context: values.context,
    timeoutS: timeout === undefined ? undefined : Number(timeout),
  };
}

/** The Job's environment, checked here with the runner's own rules before anything is created. */
async function jobEnvironment(o: Options, target: string): Promise<{ env: Record<string, string>; apiKey?: string }> {
  const env: Record<string, string> = { SCRIPT: o.script, VUS: o.vus, DURATION: o.duration };
  for (const name of FORWARDED_ENV) if (process.env[name]) env[name] = process.env[name]!;
  if (o.iterations !== undefined) env.ITERATIONS = o.iterations;
  if (o.thresholds !== undefined) env.THRESHOLDS = o.thresholds;
  const apiKey = process.env.API_KEY || undefined;
  const params = parseParams([], { ...env, PAYMENTS: target, CSV_PATH: o.csv, ...(apiKey ? { API_KEY: apiKey } : {}) });
  await loadPlan(params);
  return { env, ...(apiKey ? { apiKey } : {}) };
}

async function waitForPod(core: k8s.CoreV1Api, namespace: string, name: string, limitMs: number, interrupted: AbortSignal): Promise<k8s.V1Pod> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (interrupted.aborted) throw new RunError("interrupted");
    const { items } = await core.listNamespacedPod({ namespace, labelSelector: `app.kubernetes.io/instance=${name}` });
    const pod = items[0];
    const phase = pod?.status?.phase;
    if (pod && (phase === "Running" || phase === "Succeeded" || phase === "Failed")) return pod;
    const waiting = pod?.status?.containerStatuses?.[0]?.state?.waiting;
    if (waiting?.reason && /ErrImage|ImagePullBackOff|InvalidImageName|CreateContainer/.test(waiting.reason)) {
      throw new RunError(`the Job's pod cannot start: ${waiting.reason}: ${waiting.message ?? ""}`);
    }
    if (Date.now() > deadline) throw new RunError(`the Job's pod did not start within ${limitMs / 1000} s (${phase ?? "no pod"}${waiting?.reason ? `: ${waiting.reason}` : ""})`);
    await sleep(1000);
  }
}

/** Everything read and checked before the cluster is touched: bad options create nothing. */
export async function prepare(o: Options) {
  const gateway = `${chartFullname(o.release)}-gateway`;
  const { env, apiKey } = await jobEnvironment(o, `http://${gateway}.${o.namespace}.svc.cluster.local:8080`);
  // The files go into the ConfigMap, and the runner is told where they are in the pod.
  const files: Record<string, string> = {};
  if (o.script === "csv") {
    const name = path.basename(o.csv);
    files[name] = readFileSync(o.csv, "utf8");
    env.CSV_PATH = `${MOUNT}/${name}`;
  } else if (/\.(mjs|js)$/.test(o.script)) {
    // Always .mjs in the pod: /load has no package.json to say a .js file is an ES module.
    files["script.mjs"] = readFileSync(o.script, "utf8");
    env.SCRIPT = `${MOUNT}/script.mjs`;
  }
  if (Object.values(files).reduce((n, text) => n + Buffer.byteLength(text), 0) > MAX_FILES_BYTES) {
    throw new UsageError(`${o.script === "csv" ? "--csv" : "--script"}: too large for a ConfigMap (at most ${MAX_FILES_BYTES / 1024} KiB)`);
  }
  return { gateway, env, apiKey, files, durationS: Math.ceil(parseDuration(o.duration, "--duration") / 1000) };
}

function kubeConfig(context: string | undefined): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  kc.loadFromDefault();
  if (context !== undefined) {
    if (!kc.getContextObject(context)) throw new RunError(`no context ${context} in the kubeconfig (${kc.getContexts().map((c) => c.name).join(", ") || "none"})`);
    kc.setCurrentContext(context);
  }
  return kc;
}

async function run(o: Options, interrupted: AbortSignal, created: (what: { name: string; namespace: string; hasSecret: boolean }) => void): Promise<number> {
  const { gateway, env, apiKey, files, durationS } = await prepare(o);
  const kc = kubeConfig(o.context);
  // loadFromDefault falls back to http://localhost:8080, which is where Paygate's own gateway listens.
  if (kc.getCurrentCluster()?.server === "http://localhost:8080") throw new RunError("no cluster: set KUBECONFIG (or write ~/.kube/config)");
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const batch = kc.makeApiClient(k8s.BatchV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const { namespace } = o;

  let service: k8s.V1Service;
  try {
    service = await core.readNamespacedService({ name: gateway, namespace });
  } catch (err) {
    if (isNotFound(err)) throw new RunError(`no Service ${gateway} in namespace ${namespace}: is the chart installed (release ${o.release})? --release and --namespace name it`);
    throw err;
  }
  const port = service.spec?.ports?.find((p) => p.name === "rpc")?.port;
  if (!port) throw new RunError(`Service ${gateway} has no port named rpc`);
  const target = `http://${gateway}.${namespace}.svc.cluster.local:${port}`;

  let image = o.image;
  let imagePullPolicy = "IfNotPresent";
  if (!image) {
    const deployment = await apps.readNamespacedDeployment({ name: gateway, namespace });
    const container = deployment.spec?.template.spec?.containers.find((c) => c.name === "gateway");
    if (!container?.image) throw new RunError(`Deployment ${gateway} has no gateway container to take the image from; give --image`);
    image = container.image;
    imagePullPolicy = container.imagePullPolicy ?? imagePullPolicy;
  }

  const name = `paygate-load-${randomBytes(4).toString("hex")}`;
  const objects = loadJobObjects({ name, namespace, image, imagePullPolicy, target, env, files, apiKey, activeDeadlineSeconds: durationS + 300 });
  created({ name, namespace, hasSecret: objects.secret !== undefined });
  if (objects.secret) await core.createNamespacedSecret({ namespace, body: objects.secret });
  if (objects.configMap) await core.createNamespacedConfigMap({ namespace, body: objects.configMap });
  await batch.createNamespacedJob({ namespace, body: objects.job });
  process.stderr.write(`load:k8s  job/${name} in ${namespace}: ${o.script}, ${o.vus} VUs, ${o.duration}, image ${image}, target ${target}\n`);

  const timeoutS = o.timeoutS ?? durationS + 300;
  const deadline = Date.now() + timeoutS * 1000;
  const pod = await waitForPod(core, namespace, name, Math.min(180_000, deadline - Date.now()), interrupted);
  // The runner's output, as it comes (the stream ends when the container does), while the pod
  // is watched for its end: a log stream cut short must not leave the run waiting.
  let stopLog: AbortController | undefined;
  const logEnded = new Promise<void>((resolve) => {
    const out = new Writable({ write: (chunk: Buffer, _enc, cb) => (process.stdout.write(chunk), cb()) });
    out.on("finish", () => resolve());
    new k8s.Log(kc).log(namespace, pod.metadata!.name!, "load", out, { follow: true }).then(
      (abort) => (stopLog = abort),
      (err: unknown) => (process.stderr.write(`load:k8s: no log of the Job's pod: ${describe(err)}\n`), resolve()),
    );
  });
  try {
    for (;;) {
      if (interrupted.aborted) throw new RunError("interrupted");
      const { items } = await core.listNamespacedPod({ namespace, labelSelector: `app.kubernetes.io/instance=${name}` });
      const code = exitCodeOf(items[0]);
      if (code !== undefined) {
        await Promise.race([logEnded, sleep(5000)]);
        return code;
      }
      if (Date.now() > deadline) throw new RunError(`job/${name} did not end within ${timeoutS} s`);
      await sleep(1000);
    }
  } finally {
    stopLog?.abort();
  }
}

async function main(): Promise<number> {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const interrupted = new AbortController();
  process.once("SIGINT", () => interrupted.abort());
  process.once("SIGTERM", () => interrupted.abort());
  let made: { name: string; namespace: string; hasSecret: boolean; context?: string } | undefined;
  let code: number;
  try {
    const options = parseOptions(process.argv.slice(2));
    code = await run(options, interrupted.signal, (m) => (made = { ...m, context: options.context }));
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`load:k8s: ${err.message}\n${USAGE}\n`);
      code = 2;
    } else {
      process.stderr.write(`load:k8s: ${describe(err)}\n`);
      code = interrupted.signal.aborted ? 130 : 1;
    }
  }
  if (made) {
    const kc = kubeConfig(made.context);
    const core = kc.makeApiClient(k8s.CoreV1Api);
    const batch = kc.makeApiClient(k8s.BatchV1Api);
    const api: CleanupApi = {
      deleteNamespacedJob: (p) => batch.deleteNamespacedJob(p),
      deleteCollectionNamespacedPod: (p) => core.deleteCollectionNamespacedPod(p),
      deleteNamespacedConfigMap: (p) => core.deleteNamespacedConfigMap(p),
      deleteNamespacedSecret: (p) => core.deleteNamespacedSecret(p),
      listNamespacedPod: (p) => core.listNamespacedPod(p),
    };
    const problems = await cleanup(api, made.namespace, made.name, made.hasSecret);
    if (problems.length > 0) {
      process.stderr.write(`load:k8s: could not delete everything of ${made.name}: ${problems.join("; ")}\n`);
      if (code === 0) code = 1;
    } else process.stderr.write(`load:k8s  job/${made.name} and everything it came with deleted; exit ${code}\n`);
  }
  return code;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exit(await main());
