// The Helm chart (charts/paygate), checked without a cluster, offline:
//   - `helm lint --strict` and `helm template` for several value sets (defaults, every file in
//     charts/paygate/ci/, the development loop's values, an older Kubernetes);
//   - every rendered object against the Kubernetes and prometheus-operator schemas, unknown
//     fields included (models.ts);
//   - the services as the chart runs them: each Deployment's environment passes that service's
//     own configuration validation (its env schema from services/*/main.ts and loadConfig),
//     sets every upstream URL the service reads to the Service of that upstream, and its ports
//     and probes are the ports and paths the service serves;
//   - hardened pods, graceful shutdown timings, secrets only in Secrets, the HPA, PDBs;
//   - NetworkPolicies evaluated: exactly the calls the services make (read from their env
//     schemas), the database, DNS and metrics scrapes are allowed, nothing else;
//   - ServiceMonitors, the PrometheusRule (the repository's rules) and the dashboards (the
//     repository's JSON), and the chart's copies of both byte for byte equal to prometheus/ and
//     grafana/ (`npm run chart:sync` refreshes them);
//   - the helm test hook and NOTES.txt.
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments, stringify } from "yaml";
import type { z } from "zod";
import { fxEnv } from "../../services/fx/main.js";
import { gatewayEnv } from "../../services/gateway/main.js";
import { paymentsEnv } from "../../services/payments/main.js";
import { riskEnv } from "../../services/risk/main.js";
import { loadConfig } from "../../services/runtime/config.js";
import { exportersFromEnv } from "../../services/runtime/observability/tracing.js";
import { walletEnv } from "../../services/wallet/main.js";
import { onPath } from "../support/executables.js";
import { CHART_CHECKS, helm, repoRoot } from "./helm.js";
import { schemaErrors, typeKey, unknownFields, type K8sObject } from "./models.js";

const run = promisify(execFile);
const CHART = "charts/paygate";
const RELEASE = "paygate";
const NAMESPACE = "paygate";
const KUBE_VERSION = "1.34.0";
const MONITORING_APIS = ["-a", "monitoring.coreos.com/v1", "-a", "monitoring.coreos.com/v1/ServiceMonitor"];
const CI = process.env.CI === "true";
const read = (file: string) => readFileSync(path.join(repoRoot, file), "utf8");

/** Each service's own configuration schema: what the chart must satisfy. */
const SERVICES: Record<string, z.ZodRawShape> = { gateway: gatewayEnv, payments: paymentsEnv, fx: fxEnv, wallet: walletEnv, risk: riskEnv };
const COMPONENTS = Object.keys(SERVICES).sort();
/** The variable naming where a service finds another: FX_URL -> fx. */
const URL_VARS: Record<string, string> = { PAYMENTS_URL: "payments", FX_URL: "fx", WALLET_URL: "wallet", RISK_URL: "risk" };
/** Who calls whom, as the services' configurations say (every *_URL a service reads). */
const CALLS: Record<string, string[]> = Object.fromEntries(COMPONENTS.map((c) => [c, Object.keys(SERVICES[c]!).filter((k) => k in URL_VARS).map((k) => URL_VARS[k]!).sort()]));
/** OpenTelemetry variables the services read (the SDK and services/runtime/observability/tracing.ts). */
const OTEL_VARS = new Set(["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"]);
/** The downward-API variables the chart defines only to build OTEL_RESOURCE_ATTRIBUTES from. */
const DOWNWARD: Record<string, string> = { "metadata.name": "paygate-payments-7d9f-abcde", "metadata.namespace": NAMESPACE, "spec.nodeName": "node-1" };

interface ValueSet {
  name: string;
  args: string[];
  kubeVersion?: string;
  /** Paygate containers run the sources (devMode): their root filesystem is writable. */
  devMode?: boolean;
}

const ciValues = readdirSync(path.join(repoRoot, CHART, "ci")).filter((f) => f.endsWith("-values.yaml")).sort();
const ci = (file: string) => ["-f", `${CHART}/ci/${file}`];
const SETS: ValueSet[] = [
  { name: "defaults", args: [] },
  { name: "external database", args: ci("external-database-values.yaml") },
  { name: "HPA off", args: ci("hpa-off-values.yaml") },
  { name: "monitoring", args: [...ci("monitoring-values.yaml"), ...MONITORING_APIS] },
  { name: "NetworkPolicies off", args: ci("networkpolicy-off-values.yaml") },
  { name: "production settings", args: [...ci("production-values.yaml"), ...MONITORING_APIS] },
  { name: "development loop", args: ["-f", "k8s/paygate-dev-values.yaml", ...MONITORING_APIS], devMode: true },
  { name: "Kubernetes 1.29", args: [], kubeVersion: "1.29.0" },
];

interface Rendered {
  set: ValueSet;
  objects: K8sObject[];
  ms: number;
}
const rendered = new Map<string, Rendered>();
const get = (name: string) => rendered.get(name)!;

async function render(set: ValueSet): Promise<Rendered> {
  const t0 = performance.now();
  const out = await helm(["template", RELEASE, CHART, "--namespace", NAMESPACE, "--kube-version", set.kubeVersion ?? KUBE_VERSION, ...set.args]);
  if (out.code !== 0) throw new Error(`helm template (${set.name}) failed:\n${out.stderr}`);
  const objects = parseAllDocuments(out.stdout)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`${set.name}: rendered YAML does not parse: ${d.errors[0]!.message}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
  return { set, objects, ms: performance.now() - t0 };
}

beforeAll(async () => {
  if (!CHART_CHECKS) return;
  for (const r of await Promise.all(SETS.map(render))) rendered.set(r.set.name, r);
});

// ---- object helpers ---------------------------------------------------------------------------

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const ofKind = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind) as (K8sObject & Json)[];
const named = (objects: K8sObject[], kind: string, name: string) => ofKind(objects, kind).find((o) => o.metadata.name === name);
const componentOf = (o: K8sObject) => o.metadata.labels?.["app.kubernetes.io/component"];
const deploymentOf = (objects: K8sObject[], component: string) => ofKind(objects, "Deployment").find((d) => componentOf(d) === component)!;
const matches = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);

interface Container {
  name: string;
  command?: string[];
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  env?: { name: string; value?: string; valueFrom?: Json }[];
  [field: string]: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}
const podSpecOf = (o: Json): Json => (o.kind === "Pod" ? o.spec : o.spec.template.spec);
const containersOf = (o: Json): Container[] => [...(podSpecOf(o).initContainers ?? []), ...podSpecOf(o).containers];
const portNumber = (c: Container, port: string | number) => (typeof port === "number" ? port : c.ports?.find((p) => p.name === port)?.containerPort);

/** A container's environment as the kubelet would give it, $(VAR) references expanded. */
function environment(c: Container, objects: K8sObject[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value.replace(/\$\(([A-Z_][A-Z0-9_]*)\)/g, (all, v: string) => env[v] ?? all);
    else if (e.valueFrom?.fieldRef) env[e.name] = DOWNWARD[e.valueFrom.fieldRef.fieldPath] ?? `unknown field ${e.valueFrom.fieldRef.fieldPath}`;
    else if (e.valueFrom?.secretKeyRef) {
      const { name, key } = e.valueFrom.secretKeyRef;
      const secret = named(objects, "Secret", name);
      // A Secret the chart does not render (an external database's) holds a URL of this shape.
      env[e.name] = secret ? Buffer.from(secret.data[key], "base64").toString("utf8") : "postgres://paygate:secret@db.example.com:5432/paygate";
    } else throw new Error(`${c.name}: env ${e.name} has neither a value nor a supported valueFrom`);
  }
  return env;
}

// ---- lint and render -------------------------------------------------------------------------

describe.skipIf(!CHART_CHECKS)("helm lint and helm template", () => {
  it("covers every value set in charts/paygate/ci/", () => {
    const used = SETS.flatMap((s) => s.args).filter((a) => a.startsWith(`${CHART}/ci/`)).map((a) => path.basename(a));
    expect(new Set(used)).toEqual(new Set(ciValues));
  });

  it.each(SETS.map((s) => [s.name, s] as const))("helm lint --strict: %s", async (_name, set) => {
    const out = await helm(["lint", "--strict", CHART, "--namespace", NAMESPACE, "--kube-version", set.kubeVersion ?? KUBE_VERSION, ...set.args.filter((a, i, all) => a !== "-a" && all[i - 1] !== "-a")]);
    expect(out.code, out.stdout + out.stderr).toBe(0);
    expect(out.stdout).toContain("0 chart(s) failed");
  });

  it("values.schema.json refuses unknown and mistyped values", async () => {
    for (const bad of [
      "bogus=1",
      "components.payments.adminPort=abc",
      "components.fx.env.FX_PORT=1",
      "components.gateway.env.DATABASE_URL=postgres://x",
      "postgresql.persistence.size=lots",
      "components.payments.autoscaling.minReplicas=7",
    ]) {
      const out = await helm(["template", RELEASE, CHART, "--set", bad]);
      expect(out.code, `--set ${bad} was accepted`).not.toBe(0);
    }
  });

  it("renders every set quickly, with the expected objects", () => {
    for (const { set, objects, ms } of rendered.values()) {
      const counts = Object.fromEntries([...new Set(objects.map((o) => o.kind))].map((k) => [k, ofKind(objects, k).length]));
      console.info(`${set.name}: ${objects.length} objects in ${ms.toFixed(0)} ms ${JSON.stringify(counts)}`);
      expect(ms).toBeLessThan(10_000);
      expect(ofKind(objects, "Deployment").map(componentOf).sort()).toEqual(COMPONENTS);
      // Each component: its Service and the headless one of its replicas.
      expect(ofKind(objects, "Service").map(componentOf).sort()).toEqual(
        [...COMPONENTS, ...COMPONENTS, ...(named(objects, "StatefulSet", `${RELEASE}-postgresql`) ? ["postgresql"] : [])].sort(),
      );
      // Namespaced explicitly: `helm template | kubectl apply` (Tilt) lands where `helm install` would.
      expect(objects.filter((o) => o.metadata.namespace !== NAMESPACE).map((o) => `${o.kind}/${o.metadata.name}`)).toEqual([]);
      const names = objects.map((o) => `${o.kind}/${o.metadata.name}`);
      expect(new Set(names).size, "two objects of one kind share a name").toBe(names.length);
    }
  });
});

// ---- schemas ------------------------------------------------------------------------------

describe.skipIf(!CHART_CHECKS)("Kubernetes and prometheus-operator schemas", () => {
  it("every rendered object validates against its model", async () => {
    const errors: string[] = [];
    for (const { set, objects } of rendered.values()) {
      for (const o of objects) for (const e of await schemaErrors(o)) errors.push(`${set.name}: ${o.kind}/${o.metadata.name}: ${e}`);
    }
    expect(errors).toEqual([]);
  });

  it("no rendered object has a field its model does not know", () => {
    const objects = [...rendered.values()].flatMap(({ set, objects }) => objects.map((object) => ({ label: `${set.name}: ${object.kind}/${object.metadata.name}`, object })));
    expect(unknownFields(objects)).toEqual([]);
  });

  it("the unknown-field check catches a misplaced field (it is not vacuous)", () => {
    const deployment = structuredClone(deploymentOf(get("defaults").objects, "payments"));
    deployment.spec.template.spec.containers[0].readinessprobe = deployment.spec.template.spec.containers[0].readinessProbe;
    deployment.spec.template.spec.securityContext.readOnlyRootFilesystem = true;
    const errors = unknownFields([{ label: "broken", object: deployment }]);
    expect(errors).toHaveLength(2);
    expect(errors.join("\n")).toMatch(/readinessprobe/);
    expect(errors.join("\n")).toMatch(/readOnlyRootFilesystem.*IPodSecurityContext/);
  });
});

// ---- the services as the chart runs them -------------------------------------------------------

describe.skipIf(!CHART_CHECKS).each(SETS.map((s) => [s.name, s] as const))("services (%s)", (name, set) => {
  const objects = () => get(name).objects;

  it.each(COMPONENTS)("%s: the environment passes the service's own configuration validation", (component) => {
    const container = podSpecOf(deploymentOf(objects(), component)).containers[0] as Container;
    const env = environment(container, objects());
    const config = loadConfig(SERVICES[component]!, env) as Record<string, unknown>;
    expect(config.HOST).toBe("0.0.0.0");
    expect(config.DATA_DIR, "DATA_DIR must stay unset: the cluster runs on PostgreSQL").toBe(".data");
    expect(String(config.DATABASE_URL)).toMatch(/^postgres:\/\//);
    // Every variable the chart sets is one the service reads: a typo is not silently ignored.
    const known = new Set([...Object.keys(SERVICES[component]!), ...OTEL_VARS]);
    const helpers = new Set((container.env ?? []).filter((e) => e.valueFrom?.fieldRef).map((e) => e.name));
    for (const variable of Object.keys(env)) {
      if (helpers.has(variable)) expect(JSON.stringify(container.env), `${variable} is defined but never referenced`).toContain(`$(${variable})`);
      else expect(known.has(variable), `${component} does not read ${variable}`).toBe(true);
    }
    // The trace exporter settings are ones the service accepts.
    const saved = { ...process.env };
    try {
      for (const k of Object.keys(process.env)) if (k.startsWith("OTEL_")) delete process.env[k];
      Object.assign(process.env, Object.fromEntries(Object.entries(env).filter(([k]) => k.startsWith("OTEL_"))));
      const exporters = exportersFromEnv();
      expect(exporters.length).toBe(env.OTEL_EXPORTER_OTLP_ENDPOINT ? 1 : 0);
    } finally {
      process.env = saved;
    }
  });

  it.each(COMPONENTS)("%s: ports, probes, command and Service match what the service serves", (component) => {
    const deployment = deploymentOf(objects(), component);
    const container = podSpecOf(deployment).containers[0] as Container;
    const config = loadConfig(SERVICES[component]!, environment(container, objects())) as Record<string, number>;
    const prefix = component.toUpperCase();
    const rpcPort = config[`${prefix}_PORT`]!;
    // The gateway serves /healthz, /readyz and /metrics on its one port.
    const adminPort = config[`${prefix}_ADMIN_PORT`] ?? rpcPort;
    expect(portNumber(container, "rpc")).toBe(rpcPort);
    if (`${prefix}_ADMIN_PORT` in SERVICES[component]!) expect(portNumber(container, "admin")).toBe(adminPort);
    for (const [probe, pathName] of [
      ["startupProbe", "/healthz"],
      ["livenessProbe", "/healthz"],
      ["readinessProbe", "/readyz"],
    ] as const) {
      const p = container[probe];
      expect(p?.httpGet?.path, `${probe} path`).toBe(pathName);
      expect(portNumber(container, p.httpGet.port), `${probe} port`).toBe(adminPort);
    }
    expect(existsSync(path.join(repoRoot, "services", component, "main.ts"))).toBe(true);
    expect(container.command).toEqual(set.devMode ? ["node_modules/.bin/tsx", "watch", "--clear-screen=false", `services/${component}/main.ts`] : ["node", `dist/services/${component}/main.js`]);
    // The Services select exactly this component's pods, on ports the container has.
    const podLabels = deployment.spec.template.metadata.labels;
    expect(matches(deployment.spec.selector.matchLabels, podLabels)).toBe(true);
    const services = ofKind(objects(), "Service").filter((s) => matches(s.spec.selector, podLabels));
    expect(services.map((s) => s.metadata.name).sort()).toEqual([`${RELEASE}-${component}`, `${RELEASE}-${component}-replicas`]);
    for (const service of services) for (const p of service.spec.ports) expect(portNumber(container, p.targetPort), `Service port ${p.name}`).toBeDefined();
  });

  it.each(COMPONENTS)("%s: every upstream URL the service reads names that upstream's headless Service (every replica takes calls) and port", (component) => {
    const container = podSpecOf(deploymentOf(objects(), component)).containers[0] as Container;
    const env = environment(container, objects());
    for (const upstream of CALLS[component]!) {
      const variable = `${upstream.toUpperCase()}_URL`;
      expect(env[variable], `${component} needs ${variable}`).toBeDefined();
      const url = new URL(env[variable]!);
      const service = named(objects(), "Service", url.hostname);
      expect(service, `${variable}: no Service ${url.hostname}`).toBeDefined();
      expect(service!.spec.clusterIP, `${variable}: Service ${url.hostname} is not headless`).toBe("None");
      const servicePort = service!.spec.ports.find((p: Json) => p.port === Number(url.port));
      expect(servicePort, `${variable}: Service ${url.hostname} has no port ${url.port}`).toBeDefined();
      const target = podSpecOf(deploymentOf(objects(), upstream)).containers[0] as Container;
      expect(matches(service!.spec.selector, deploymentOf(objects(), upstream).spec.template.metadata.labels)).toBe(true);
      // The port reaches the upstream's RPC port, where it serves its API.
      expect(portNumber(target, servicePort.targetPort)).toBe(portNumber(target, "rpc"));
    }
  });

  it("pods are hardened: non-root, read-only root filesystem, no privilege escalation, no capabilities, seccomp, /tmp an emptyDir", () => {
    const dockerUser = /^USER (\d+):(\d+)$/m.exec(read("Dockerfile").split(/^FROM .* AS runtime$/m)[1] ?? "");
    expect(dockerUser, "the runtime stage runs as a numeric user").not.toBeNull();
    const workloads = [...ofKind(objects(), "Deployment"), ...ofKind(objects(), "StatefulSet"), ...ofKind(objects(), "Pod")];
    expect(workloads.length).toBeGreaterThanOrEqual(5);
    for (const w of workloads) {
      const spec = podSpecOf(w);
      const where = `${w.kind}/${w.metadata.name}`;
      expect(spec.automountServiceAccountToken, where).toBe(false);
      // The rest of the restricted Pod Security Standard: no host namespaces or ports, and only
      // the volume types it allows.
      expect([spec.hostNetwork, spec.hostPID, spec.hostIPC].filter(Boolean), where).toEqual([]);
      expect(containersOf(w).flatMap((c) => (c.ports ?? []).filter((p: Json) => p.hostPort)), where).toEqual([]);
      const RESTRICTED_VOLUMES = ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
      for (const v of spec.volumes ?? []) expect(Object.keys(v).filter((k) => k !== "name").every((k) => RESTRICTED_VOLUMES.includes(k)), `${where} volume ${v.name}`).toBe(true);
      expect(spec.securityContext.runAsNonRoot, where).toBe(true);
      expect(Number.isInteger(spec.securityContext.runAsUser) && spec.securityContext.runAsUser > 0, where).toBe(true);
      expect(spec.securityContext.seccompProfile?.type, where).toBe("RuntimeDefault");
      const paygate = componentOf(w) !== "postgresql";
      if (paygate) expect([spec.securityContext.runAsUser, spec.securityContext.runAsGroup], where).toEqual([Number(dockerUser![1]), Number(dockerUser![2])]);
      const tmp = spec.volumes?.find((v: Json) => v.emptyDir && containersOf(w).every((c) => c.volumeMounts?.some((m: Json) => m.name === v.name && m.mountPath === "/tmp")));
      expect(tmp, `${where}: /tmp is an emptyDir in every container`).toBeDefined();
      for (const c of containersOf(w)) {
        const sc = c.securityContext ?? {};
        expect(sc.allowPrivilegeEscalation, `${where} ${c.name}`).toBe(false);
        expect(sc.privileged ?? false, `${where} ${c.name}`).toBe(false);
        expect(sc.runAsNonRoot ?? true, `${where} ${c.name}`).toBe(true);
        expect(sc.capabilities?.drop, `${where} ${c.name}`).toEqual(["ALL"]);
        expect(sc.capabilities?.add, `${where} ${c.name}`).toBeUndefined();
        expect(sc.readOnlyRootFilesystem, `${where} ${c.name}`).toBe(!(set.devMode && paygate));
        expect(c.resources?.requests?.cpu && c.resources?.requests?.memory && c.resources?.limits?.memory, `${where} ${c.name}: resources`).toBeTruthy();
      }
    }
  });

  it("termination grace covers the preStop sleep, the drain delay and the in-flight calls' time", () => {
    for (const component of COMPONENTS) {
      const deployment = deploymentOf(objects(), component);
      const container = podSpecOf(deployment).containers[0] as Container;
      const config = loadConfig(SERVICES[component]!, environment(container, objects())) as Record<string, number>;
      const preStop = container.lifecycle?.preStop;
      const sleep = preStop?.sleep?.seconds ?? (preStop?.exec?.command?.[0] === "sleep" ? Number(preStop.exec.command[1]) : undefined);
      expect(sleep, `${component}: preStop sleeps`).toBeGreaterThan(0);
      if (set.kubeVersion === "1.29.0") expect(preStop.exec, "preStop sleep action needs Kubernetes 1.30: exec sleep before").toBeDefined();
      // After the drain delay and the in-flight bound, shutdown cuts off late calls (1 s), flushes
      // traces (2 s) and shuts the exporter down (3 s): see services/runtime/rpc/server.ts, process.ts.
      const needed = sleep! + Math.ceil((config.SHUTDOWN_DRAIN_DELAY_MS! + config.SHUTDOWN_TIMEOUT_MS!) / 1000) + 6;
      expect(podSpecOf(deployment).terminationGracePeriodSeconds, component).toBeGreaterThanOrEqual(needed);
    }
  });

  it("the database URL only ever comes from a Secret", () => {
    const workloads = [...ofKind(objects(), "Deployment"), ...ofKind(objects(), "Pod")];
    for (const w of workloads) {
      for (const c of containersOf(w)) {
        const db = c.env?.find((e) => e.name === "DATABASE_URL");
        expect(db?.value, `${w.metadata.name} ${c.name}`).toBeUndefined();
        expect(db?.valueFrom?.secretKeyRef, `${w.metadata.name} ${c.name}`).toBeDefined();
      }
    }
    for (const cm of ofKind(objects(), "ConfigMap")) expect(JSON.stringify(cm.data)).not.toMatch(/postgres(ql)?:\/\/[^"\s]*:[^"\s]*@/);
  });

  it("a PodDisruptionBudget per service", () => {
    for (const component of COMPONENTS) {
      const labels = deploymentOf(objects(), component).spec.template.metadata.labels;
      expect(ofKind(objects(), "PodDisruptionBudget").filter((p) => matches(p.spec.selector.matchLabels, labels)), component).toHaveLength(1);
    }
  });
});

// ---- per value set --------------------------------------------------------------------------

describe.skipIf(!CHART_CHECKS)("value sets", () => {
  it("defaults: in-cluster PostgreSQL with a generated password, the URL the services get points at it", () => {
    const { objects } = get("defaults");
    const statefulSet = named(objects, "StatefulSet", `${RELEASE}-postgresql`)!;
    const secret = named(objects, "Secret", `${RELEASE}-postgresql`)!;
    const decode = (k: string) => Buffer.from(secret.data[k], "base64").toString("utf8");
    expect(decode("password")).toMatch(/^[A-Za-z0-9]{32}$/);
    const url = new URL(decode("DATABASE_URL"));
    expect([url.hostname, url.port, url.username, url.password, url.pathname]).toEqual([`${RELEASE}-postgresql`, "5432", decode("username"), decode("password"), "/paygate"]);
    const pg = statefulSet.spec.template.spec.containers[0] as Container;
    expect(pg.image).toMatch(/^postgres:\d+\.\d+-\w+$/);
    expect(pg.env?.find((e) => e.name === "POSTGRES_DB")?.value).toBe("paygate");
    expect(statefulSet.spec.volumeClaimTemplates[0].spec.resources.requests.storage).toBe("2Gi");
    expect(named(objects, "Service", `${RELEASE}-postgresql`)!.spec.ports[0].port).toBe(5432);
    // Demo data stays off by default.
    expect(environment(podSpecOf(deploymentOf(objects, "gateway")).containers[0], objects).GATEWAY_DEMO_DATA).toBe("false");
  });

  it("external database: no PostgreSQL of the chart's, every service reads the named Secret", () => {
    const { objects } = get("external database");
    expect(ofKind(objects, "StatefulSet")).toEqual([]);
    expect(ofKind(objects, "Secret")).toEqual([]);
    for (const component of COMPONENTS) {
      for (const c of containersOf(deploymentOf(objects, component))) {
        expect(c.env?.find((e) => e.name === "DATABASE_URL")?.valueFrom?.secretKeyRef).toEqual({ name: "paygate-database", key: "DATABASE_URL" });
      }
    }
  });

  it("HPA: on payments by default (the Deployment leaves replicas to it), off on request", () => {
    const on = get("defaults").objects;
    const [hpa] = ofKind(on, "HorizontalPodAutoscaler");
    expect(ofKind(on, "HorizontalPodAutoscaler")).toHaveLength(1);
    expect(hpa!.spec.scaleTargetRef).toEqual({ apiVersion: "apps/v1", kind: "Deployment", name: `${RELEASE}-payments` });
    expect(hpa!.spec.metrics[0].resource.name).toBe("cpu");
    expect(deploymentOf(on, "payments").spec.replicas).toBeUndefined();
    expect(deploymentOf(on, "payments").spec.template.spec.containers[0].resources.requests.cpu).toBeDefined();
    const off = get("HPA off").objects;
    expect(ofKind(off, "HorizontalPodAutoscaler")).toEqual([]);
    expect(deploymentOf(off, "payments").spec.replicas).toBe(3);
  });

  it("NetworkPolicies off: none rendered", () => {
    expect(ofKind(get("NetworkPolicies off").objects, "NetworkPolicy")).toEqual([]);
  });

  it("without the prometheus-operator API: no ServiceMonitor or PrometheusRule", () => {
    for (const name of ["defaults", "external database", "HPA off", "NetworkPolicies off"]) {
      const kinds = get(name).objects.map((o) => o.kind);
      expect(kinds).not.toContain("ServiceMonitor");
      expect(kinds).not.toContain("PrometheusRule");
    }
  });

  it("production settings: image by digest, traces with the pod's resource attributes, the risk rules mounted", () => {
    const { objects } = get("production settings");
    const risk = deploymentOf(objects, "risk");
    const container = podSpecOf(risk).containers[0] as Container;
    expect(container.image).toBe("registry.example.com/paygate@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    const env = environment(container, objects);
    expect(env.OTEL_EXPORTER_OTLP_ENDPOINT).toBe("http://otel-collector.observability:4317");
    expect(env.OTEL_EXPORTER_OTLP_PROTOCOL).toBe("grpc");
    expect(env.OTEL_RESOURCE_ATTRIBUTES).toContain(`k8s.namespace.name=${NAMESPACE}`);
    expect(env.OTEL_RESOURCE_ATTRIBUTES).toContain("deployment.environment=production");
    const rules = named(objects, "ConfigMap", `${RELEASE}-risk-rules`)!;
    const mount = container.volumeMounts.find((m: Json) => env.RISK_RULES_FILE!.startsWith(`${m.mountPath}/`));
    expect(podSpecOf(risk).volumes.find((v: Json) => v.name === mount.name).configMap.name).toBe(rules.metadata.name);
    expect(parse(rules.data[path.basename(env.RISK_RULES_FILE!)]).version).toBe("2026-12-01");
    expect(risk.spec.template.metadata.annotations["paygate.dev/risk-rules-sha256"]).toMatch(/^[0-9a-f]{64}$/);
  });
});

// ---- NetworkPolicies --------------------------------------------------------------------------

interface Endpoint {
  name: string;
  namespace: string;
  namespaceLabels: Record<string, string>;
  labels: Record<string, string>;
  ip?: string;
  ports: { name?: string; port: number; protocol: string }[];
}

function selects(selector: Json | undefined, labels: Record<string, string>): boolean {
  if (!selector) return true;
  if (!matches(selector.matchLabels, labels)) return false;
  return (selector.matchExpressions ?? []).every((e: Json) => {
    const v = labels[e.key];
    if (e.operator === "In") return v !== undefined && e.values.includes(v);
    if (e.operator === "NotIn") return v === undefined || !e.values.includes(v);
    if (e.operator === "Exists") return v !== undefined;
    return v === undefined;
  });
}

function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split("/");
  const n = (a: string) => a.split(".").reduce((acc, x) => (acc << 8) + Number(x), 0) >>> 0;
  const mask = Number(bits) === 0 ? 0 : (~0 << (32 - Number(bits))) >>> 0;
  return ((n(ip) & mask) >>> 0) === ((n(base!) & mask) >>> 0);
}

function peerMatches(peer: Json, policyNamespace: string, other: Endpoint): boolean {
  if (peer.ipBlock) return other.ip !== undefined && inCidr(other.ip, peer.ipBlock.cidr);
  const namespaceOk = peer.namespaceSelector ? selects(peer.namespaceSelector, other.namespaceLabels) : other.namespace === policyNamespace;
  return namespaceOk && other.ip === undefined && selects(peer.podSelector, other.labels);
}

/** Whether `policies` let `from` open a connection to `to` on `port` (both directions checked). */
function allowed(policies: Json[], from: Endpoint, to: Endpoint, port: { name?: string; port: number; protocol: string }): boolean {
  const portOk = (rule: Json) =>
    !rule.ports || rule.ports.some((p: Json) => (p.protocol ?? "TCP") === port.protocol && (p.port === undefined || p.port === port.port || (typeof p.port === "string" && p.port === port.name)));
  const direction = (self: Endpoint, other: Endpoint, type: "Ingress" | "Egress") => {
    if (self.ip !== undefined) return true;
    const applying = policies.filter((p) => p.metadata.namespace === self.namespace && selects(p.spec.podSelector, self.labels) && p.spec.policyTypes.includes(type));
    if (applying.length === 0) return true;
    const field = type === "Ingress" ? "ingress" : "egress";
    const peers = type === "Ingress" ? "from" : "to";
    return applying.some((p) => (p.spec[field] ?? []).some((rule: Json) => portOk(rule) && (!rule[peers] || rule[peers].some((peer: Json) => peerMatches(peer, NAMESPACE, other)))));
  };
  return direction(from, to, "Egress") && direction(to, from, "Ingress");
}

describe.skipIf(!CHART_CHECKS).each(["defaults", "external database", "production settings"])("NetworkPolicies (%s)", (name) => {
  it("allow exactly the calls the services make, the database, DNS and metrics scrapes", () => {
    const { objects } = get(name);
    const policies = ofKind(objects, "NetworkPolicy");
    expect(policies.length).toBeGreaterThan(COMPONENTS.length);
    const pod = (o: Json, component: string): Endpoint => ({
      name: component,
      namespace: NAMESPACE,
      namespaceLabels: { "kubernetes.io/metadata.name": NAMESPACE },
      labels: podSpecOf(o) === o.spec ? o.metadata.labels : o.spec.template.metadata.labels,
      ports: containersOf(o).flatMap((c) => (c.ports ?? []).map((p) => ({ name: p.name, port: p.containerPort, protocol: p.protocol ?? "TCP" }))),
    });
    const outside = (n: string, namespace: string, labels: Record<string, string>, ports: Endpoint["ports"] = [], ip?: string): Endpoint => ({
      name: n,
      namespace,
      namespaceLabels: { "kubernetes.io/metadata.name": namespace },
      labels,
      ports,
      ...(ip ? { ip } : {}),
    });
    const components = COMPONENTS.map((c) => pod(deploymentOf(objects, c), c));
    const testPod = ofKind(objects, "Pod").find((p) => componentOf(p) === "test");
    const statefulSet = ofKind(objects, "StatefulSet")[0];
    const database = statefulSet
      ? pod(statefulSet, "postgresql")
      : outside("external-database", "", {}, [{ port: 5432, protocol: "TCP" }], "10.20.0.5");
    const monitoring = outside("prometheus", "monitoring", { "app.kubernetes.io/name": "prometheus" });
    const ingressController = outside("ingress-controller", "ingress-nginx", { app: "ingress-nginx" });
    const stranger = outside("stranger", "default", { app: "other" });
    const dns = outside("kube-dns", "kube-system", { "k8s-app": "kube-dns" }, [
      { name: "dns", port: 53, protocol: "UDP" },
      { name: "dns-tcp", port: 53, protocol: "TCP" },
    ]);
    const internet = outside("internet", "", {}, [{ port: 443, protocol: "TCP" }], "93.184.216.34");
    const collector = outside("otel-collector", "observability", { app: "otel-collector" }, [{ name: "otlp-grpc", port: 4317, protocol: "TCP" }]);
    const sources = [...components, ...(testPod ? [pod(testPod, "test")] : []), ...(statefulSet ? [database] : []), monitoring, ingressController, stranger];
    const destinations = [...components, database, dns, internet, collector];
    const tracing = name === "production settings";
    const gatewayFrom = name === "production settings" ? ["ingress-controller", "prometheus", "test"] : undefined;
    const paygatePods = new Set([...COMPONENTS, "test"]);

    // Pods outside the release are not the chart's to restrict; the release's PostgreSQL
    // reaches nothing at all.
    const expected = (from: Endpoint, to: Endpoint, port: Endpoint["ports"][number]): boolean => {
      if (from.name === "postgresql") return false;
      const own = paygatePods.has(from.name);
      if (to === dns) return true;
      if (to === internet) return !own;
      if (to === collector) return !own || tracing;
      if (to === database) return own || database.ip !== undefined;
      if (to.name === "gateway") return gatewayFrom ? gatewayFrom.includes(from.name) : !paygatePods.has(from.name) || from.name === "test";
      if (port.name === "rpc") return CALLS[from.name]?.includes(to.name) === true || (to.name === "wallet" && from.name === "test");
      if (port.name === "admin") return from.name === "prometheus" || (to.name === "wallet" && from.name === "test");
      return false;
    };
    const wrong: string[] = [];
    for (const from of sources) {
      for (const to of destinations) {
        if (from === to) continue;
        for (const port of to.ports) {
          const is = allowed(policies, from, to, port);
          if (is !== expected(from, to, port)) wrong.push(`${from.name} -> ${to.name}:${port.name ?? port.port}/${port.protocol} is ${is ? "allowed" : "denied"}`);
        }
      }
    }
    expect(wrong).toEqual([]);
  });
});

// ---- monitoring -------------------------------------------------------------------------------

const rulesSource = "prometheus/rules/paygate.rules.yml";

describe("the chart's copies of prometheus/ and grafana/", () => {
  it("the chart's copies of the rules and dashboards are byte for byte the repository's (npm run chart:sync)", () => {
    expect(read(`${CHART}/files/prometheus/paygate.rules.yml`) === read(rulesSource), `${CHART}/files/prometheus/ differs from ${rulesSource}: run npm run chart:sync`).toBe(true);
    const dashboards = readdirSync(path.join(repoRoot, "grafana/dashboards")).sort();
    expect(readdirSync(path.join(repoRoot, CHART, "files/grafana")).sort()).toEqual(dashboards);
    for (const f of dashboards) expect(read(`${CHART}/files/grafana/${f}`) === read(`grafana/dashboards/${f}`), `${f} differs: run npm run chart:sync`).toBe(true);
  });
});

describe.skipIf(!CHART_CHECKS)("ServiceMonitors, PrometheusRule and dashboards", () => {

  it("one ServiceMonitor per service, scraping /metrics where the service serves it, named as prometheus.yml's jobs", () => {
    const { objects } = get("monitoring");
    const monitors = ofKind(objects, "ServiceMonitor");
    expect(monitors).toHaveLength(COMPONENTS.length);
    const jobs: string[] = [];
    for (const m of monitors) {
      expect(m.metadata.labels!.release).toBe("kube-prometheus-stack");
      expect(m.spec.namespaceSelector.matchNames).toEqual([NAMESPACE]);
      const services = ofKind(objects, "Service").filter((s) => matches(m.spec.selector.matchLabels, s.metadata.labels));
      expect(services, m.metadata.name).toHaveLength(1);
      const service = services[0]!;
      const component = componentOf(service)!;
      jobs.push(service.metadata.labels![m.spec.jobLabel]!);
      const container = podSpecOf(deploymentOf(objects, component)).containers[0] as Container;
      const config = loadConfig(SERVICES[component]!, environment(container, objects)) as Record<string, number>;
      const prefix = component.toUpperCase();
      const metricsPort = config[`${prefix}_ADMIN_PORT`] ?? config[`${prefix}_PORT`];
      expect(m.spec.endpoints).toHaveLength(1);
      const endpoint = m.spec.endpoints[0];
      expect(endpoint.path).toBe("/metrics");
      const servicePort = service.spec.ports.find((p: Json) => p.name === endpoint.port);
      expect(portNumber(container, servicePort.targetPort), `${component} metrics port`).toBe(metricsPort);
    }
    const prometheusJobs = (parse(read("prometheus/prometheus.yml")) as { scrape_configs: { job_name: string }[] }).scrape_configs.map((s) => s.job_name);
    expect(jobs.sort()).toEqual(prometheusJobs.sort());
  });

  it("the PrometheusRule holds the repository's rule groups, PaygateTargetDown narrowed to this release", () => {
    const { objects } = get("monitoring");
    const [rule] = ofKind(objects, "PrometheusRule");
    expect(rule!.metadata.labels!.release).toBe("kube-prometheus-stack");
    const expected = parse(read(rulesSource)) as { groups: { rules: { alert?: string; expr: string }[] }[] };
    for (const g of expected.groups) for (const r of g.rules) if (r.alert === "PaygateTargetDown") r.expr = `up{namespace="${NAMESPACE}", job=~"${COMPONENTS.join("|")}"} == 0`;
    expect(rule!.spec.groups).toEqual(expected.groups);
  });

  it.skipIf(!onPath("promtool") && !CI)("promtool accepts the PrometheusRule's groups", async () => {
    const { objects } = get("monitoring");
    const dir = mkdtempSync(path.join(os.tmpdir(), "paygate-rules-"));
    const file = path.join(dir, "rendered.rules.yml");
    try {
      writeFileSync(file, stringify({ groups: ofKind(objects, "PrometheusRule")[0]!.spec.groups }));
      const { stdout } = await run("promtool", ["check", "rules", file]);
      expect(stdout).toMatch(/SUCCESS: \d+ rules found/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the dashboards are ConfigMaps for Grafana's sidecar holding the repository's JSON", () => {
    const { objects } = get("defaults");
    const dashboards = ofKind(objects, "ConfigMap").filter((c) => c.metadata.labels?.grafana_dashboard === "1");
    const files = readdirSync(path.join(repoRoot, "grafana/dashboards")).sort();
    expect(dashboards.flatMap((d) => Object.keys(d.data)).sort()).toEqual(files);
    for (const d of dashboards) for (const [file, json] of Object.entries(d.data)) expect(json === read(`grafana/dashboards/${file}`), file).toBe(true);
  });
});

// ---- helm test and NOTES ----------------------------------------------------------------------

describe.skipIf(!CHART_CHECKS)("helm test and NOTES.txt", () => {
  it("the test hook runs the chart's payment test against the gateway and the wallet's Services", async () => {
    const { objects } = get("defaults");
    const pods = ofKind(objects, "Pod");
    expect(pods).toHaveLength(1);
    const pod = pods[0]!;
    expect(pod.metadata.annotations!["helm.sh/hook"]).toBe("test");
    const container = pod.spec.containers[0] as Container;
    const env = environment(container, objects);
    const target = (variable: string, component: string, portName: string) => {
      const url = new URL(env[variable]!);
      const service = named(objects, "Service", url.hostname)!;
      const servicePort = service.spec.ports.find((p: Json) => p.port === Number(url.port));
      const upstream = podSpecOf(deploymentOf(objects, component)).containers[0] as Container;
      expect(componentOf(service), variable).toBe(component);
      expect(portNumber(upstream, servicePort.targetPort), variable).toBe(portNumber(upstream, portName));
    };
    target("GATEWAY_URL", "gateway", "rpc");
    target("WALLET_URL", "wallet", "rpc");
    target("WALLET_ADMIN_URL", "wallet", "admin");
    const script = container.command![1]!;
    const mount = container.volumeMounts.find((m: Json) => script.startsWith(`${m.mountPath}/`));
    const configMap = named(objects, "ConfigMap", pod.spec.volumes.find((v: Json) => v.name === mount.name).configMap.name)!;
    const source = configMap.data[path.basename(script)];
    expect(source).toBe(read(`${CHART}/files/tests/payment-test.mjs`));
    // The operator CLI the script runs is part of the build.
    const cli = /"(dist\/services\/[^"]+)\.js"/.exec(source)![1]!.replace(/^dist\//, "");
    expect(existsSync(path.join(repoRoot, `${cli}.ts`))).toBe(true);
    await run(process.execPath, ["--check", path.join(repoRoot, CHART, "files/tests/payment-test.mjs")]);
  });

  it("NOTES.txt says how to reach the gateway and create a merchant", async () => {
    const out = await helm(["install", RELEASE, CHART, "--dry-run=client", "--namespace", NAMESPACE]);
    expect(out.code, out.stderr).toBe(0);
    const notes = out.stdout.slice(out.stdout.indexOf("NOTES:"));
    expect(notes).toContain(`kubectl -n ${NAMESPACE} port-forward svc/${RELEASE}-gateway 8080:8080`);
    expect(notes).toContain("node dist/services/gateway/admin-cli.js create-merchant --id acme");
    expect(notes).toContain(`helm test ${RELEASE}`);
  });
});
