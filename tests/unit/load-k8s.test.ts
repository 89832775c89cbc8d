// npm run load:k8s (scripts/load-k8s.ts) without a cluster: the objects it creates (their
// schema, the restricted security context of the chart's own pods, one attempt, a TTL, labels
// that keep the chart's NetworkPolicies off the Job), its cleanup against a stand-in API, and
// its refusal of bad options before it touches any cluster.
import { spawn } from "node:child_process";
import { ApiException, type V1Pod } from "@kubernetes/client-node";
import { Job } from "kubernetes-models/batch/v1/Job";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Secret } from "kubernetes-models/v1/Secret";
import { parseAllDocuments } from "yaml";
import { describe, expect, it, vi } from "vitest";
import { writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { chartFullname, cleanup, exitCodeOf, loadJobObjects, prepare, type CleanupApi, type LoadJobOptions, type Options } from "../../scripts/load-k8s.js";
import { UsageError } from "../../services/loadtest/params.js";
import { helm } from "../k8s/helm.js";
import { repoRoot, tempDir } from "../support/stack.js";

vi.setConfig({ testTimeout: 60_000 });

const options: LoadJobOptions = {
  name: "paygate-load-0a1b2c3d",
  namespace: "paygate",
  image: "paygate:0.1.0",
  imagePullPolicy: "IfNotPresent",
  target: "http://paygate-gateway.paygate.svc.cluster.local:8080",
  env: { SCRIPT: "csv", CSV_PATH: "/load/dummy_transactions.csv", VUS: "4", DURATION: "30s", THRESHOLDS: "p(95)<500" },
  files: { "dummy_transactions.csv": "id,currency,amount,source_account,destination_account\nD-1,USD,1.00,acme_usd,globex_usd\n" },
  apiKey: "pgk_test_key",
  activeDeadlineSeconds: 330,
};

describe("load:k8s objects", () => {
  const { configMap, secret, job } = loadJobObjects(options);
  const pod = job.spec!.template.spec!;
  const container = pod.containers[0]!;

  it("are valid Kubernetes objects", () => {
    expect(() => new Job(job as never).validate()).not.toThrow();
    expect(() => new ConfigMap(configMap! as never).validate()).not.toThrow();
    expect(() => new Secret(secret as never).validate()).not.toThrow();
  });

  it("run the runner from Paygate's image against the gateway Service, with the CSV from the ConfigMap and the key from the Secret", () => {
    expect(container.image).toBe("paygate:0.1.0");
    expect(container.command).toEqual(["node", "dist/services/loadtest/main.js"]);
    const env = Object.fromEntries(container.env!.map((e) => [e.name, e.value ?? e.valueFrom]));
    expect(env).toEqual({
      PAYMENTS: options.target,
      SCRIPT: "csv",
      CSV_PATH: "/load/dummy_transactions.csv",
      VUS: "4",
      DURATION: "30s",
      THRESHOLDS: "p(95)<500",
      API_KEY: { secretKeyRef: { name: options.name, key: "API_KEY" } },
    });
    expect(configMap!.data).toEqual(options.files);
    expect(secret!.stringData).toEqual({ API_KEY: "pgk_test_key" });
    expect(container.volumeMounts).toContainEqual({ name: "load", mountPath: "/load", readOnly: true });
    expect(pod.volumes).toContainEqual({ name: "load", configMap: { name: options.name } });
  });

  it("without files there is no ConfigMap (nor its volume); without a key no Secret", () => {
    const plain = loadJobObjects({ ...options, env: { SCRIPT: "grpc", VUS: "2", DURATION: "10s" }, files: {}, apiKey: undefined });
    expect(plain.configMap).toBeUndefined();
    expect(plain.secret).toBeUndefined();
    const spec = plain.job.spec!.template.spec!;
    expect(spec.volumes).toEqual([{ name: "tmp", emptyDir: {} }]);
    expect(spec.containers[0]!.volumeMounts).toEqual([{ name: "tmp", mountPath: "/tmp" }]);
    expect(spec.containers[0]!.env!.map((e) => e.name)).toEqual(["PAYMENTS", "SCRIPT", "VUS", "DURATION"]);
    expect(() => new Job(plain.job as never).validate()).not.toThrow();
  });

  it("one attempt, bounded in time, removed after a while even if load:k8s is not there to delete it", () => {
    expect(job.spec).toMatchObject({ backoffLimit: 0, activeDeadlineSeconds: 330, ttlSecondsAfterFinished: 600 });
    expect(pod).toMatchObject({ restartPolicy: "Never", automountServiceAccountToken: false, enableServiceLinks: false });
  });

  it("labels every object and the pod as the run's, never as the release's (whose NetworkPolicies would cut the Job off)", () => {
    const labels = { "app.kubernetes.io/name": "paygate-load", "app.kubernetes.io/instance": options.name, "app.kubernetes.io/managed-by": "paygate-load-k8s", "app.kubernetes.io/part-of": "paygate", "app.kubernetes.io/component": "load" };
    for (const o of [configMap!, secret!, job]) expect(o.metadata).toEqual({ name: options.name, namespace: "paygate", labels });
    expect(job.spec!.template.metadata!.labels).toEqual(labels);
  });

  it("has the security context of the chart's own pods (restricted Pod Security Standard, read-only root, /tmp an emptyDir)", async () => {
    const out = await helm(["template", "paygate", "charts/paygate", "--namespace", "paygate"]);
    expect(out.stderr).toBe("");
    const gateway = parseAllDocuments(out.stdout)
      .map((d) => d.toJS() as { kind?: string; metadata?: { name?: string }; spec?: { template: { spec: { securityContext: unknown; containers: { securityContext: unknown }[] } } } })
      .find((o) => o?.kind === "Deployment" && o.metadata?.name === "paygate-gateway")!;
    expect(pod.securityContext).toEqual(gateway.spec!.template.spec.securityContext);
    expect(container.securityContext).toEqual(gateway.spec!.template.spec.containers[0]!.securityContext);
    expect(container.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, runAsNonRoot: true, capabilities: { drop: ["ALL"] } });
    expect(container.volumeMounts).toContainEqual({ name: "tmp", mountPath: "/tmp" });
    expect(pod.volumes).toContainEqual({ name: "tmp", emptyDir: {} });
  });

  it("aims at the chart's gateway Service name for any release", () => {
    expect(chartFullname("paygate")).toBe("paygate");
    expect(chartFullname("staging")).toBe("staging-paygate");
    expect(chartFullname("paygate-canary")).toBe("paygate-canary");
  });

  it("takes the runner's exit code from the ended container only", () => {
    const pod = (state: object): V1Pod => ({ status: { containerStatuses: [{ name: "load", state, image: "", imageID: "", ready: false, restartCount: 0 }] } });
    expect(exitCodeOf(pod({ terminated: { exitCode: 99 } }))).toBe(99);
    expect(exitCodeOf(pod({ terminated: { exitCode: 0 } }))).toBe(0);
    expect(exitCodeOf(pod({ running: {} }))).toBeUndefined();
    expect(exitCodeOf(undefined)).toBeUndefined();
  });
});

describe("load:k8s cleanup", () => {
  /** A stand-in API that records the calls; `fail` makes a delete answer with that HTTP code. */
  function fakeApi(fail: Record<string, number>, podsLeft: number[]) {
    const calls: string[] = [];
    const call = (what: string) => {
      calls.push(what);
      const code = fail[what.split(" ")[0]!];
      return code ? Promise.reject(new ApiException(code, `HTTP-Code: ${code}`, { message: `${what.split(" ")[0]} refused` }, {})) : Promise.resolve({});
    };
    const api: CleanupApi = {
      deleteNamespacedJob: (p) => call(`job ${p.namespace}/${p.name} ${p.propagationPolicy}`),
      deleteCollectionNamespacedPod: (p) => call(`pods ${p.namespace} ${p.labelSelector}`),
      deleteNamespacedConfigMap: (p) => call(`configmap ${p.namespace}/${p.name}`),
      deleteNamespacedSecret: (p) => call(`secret ${p.namespace}/${p.name}`),
      listNamespacedPod: () => Promise.resolve({ items: Array.from({ length: podsLeft.shift() ?? 0 }, () => ({})) }),
    };
    return { api, calls };
  }

  it("deletes the Job (with its pods), the ConfigMap and the Secret, then waits until no pod is left", async () => {
    const { api, calls } = fakeApi({}, [1, 1, 0]);
    expect(await cleanup(api, "paygate", "paygate-load-1", true)).toEqual([]);
    expect(calls).toEqual([
      "job paygate/paygate-load-1 Background",
      "pods paygate app.kubernetes.io/managed-by=paygate-load-k8s,app.kubernetes.io/instance=paygate-load-1",
      "configmap paygate/paygate-load-1",
      "secret paygate/paygate-load-1",
    ]);
  });

  it("reports an API it cannot reach instead of failing", async () => {
    const unreachable = () => Promise.reject(new Error("connect ECONNREFUSED 127.0.0.1:6443"));
    const api: CleanupApi = { deleteNamespacedJob: unreachable, deleteCollectionNamespacedPod: unreachable, deleteNamespacedConfigMap: unreachable, deleteNamespacedSecret: unreachable, listNamespacedPod: unreachable };
    expect(await cleanup(api, "paygate", "paygate-load-3", true)).toEqual([
      "job/paygate-load-3: connect ECONNREFUSED 127.0.0.1:6443",
      "pods of paygate-load-3: connect ECONNREFUSED 127.0.0.1:6443",
      "configmap/paygate-load-3: connect ECONNREFUSED 127.0.0.1:6443",
      "secret/paygate-load-3: connect ECONNREFUSED 127.0.0.1:6443",
      "pods of paygate-load-3: connect ECONNREFUSED 127.0.0.1:6443",
    ]);
  });

  it("counts what is already gone as deleted, goes on past a failure and reports it, and reports pods that stay", async () => {
    const { api, calls } = fakeApi({ job: 404, configmap: 500 }, [2, 2, 2, 2, 2, 2, 2, 2]);
    const problems = await cleanup(api, "paygate", "paygate-load-2", false, 1200);
    expect(calls.map((c) => c.split(" ")[0])).toEqual(["job", "pods", "configmap"]);
    expect(problems).toEqual(["configmap/paygate-load-2: HTTP 500: configmap refused", "2 pod(s) of paygate-load-2 still there after 1.2 s"]);
  });
});

describe("load:k8s options", () => {
  const base: Options = { script: "csv", vus: "4", duration: "30s", csv: "", release: "paygate", namespace: "paygate" };

  it("puts the files a run reads into the ConfigMap and tells the runner where they are in the pod", async () => {
    const dir = tempDir("paygate-load-k8s-");
    try {
      const csv = path.join(dir.dir, "rows.csv");
      writeFileSync(csv, "id,currency,amount,source_account,destination_account\nD-1,USD,1.00,acme_usd,globex_usd\n");
      const mix = path.join(dir.dir, "mix.js");
      writeFileSync(mix, 'export const protocol = "rest";\nexport function payment() { return { sourceAccount: "acme_usd", destinationAccount: "globex_eur", currency: "USD", amount: "1.00" }; }\n');
      const fromCsv = await prepare({ ...base, csv, iterations: "50" });
      expect(fromCsv.gateway).toBe("paygate-gateway");
      expect(fromCsv.files).toEqual({ "rows.csv": expect.stringContaining("D-1,USD,1.00") });
      expect(fromCsv.env).toMatchObject({ SCRIPT: "csv", CSV_PATH: "/load/rows.csv", VUS: "4", DURATION: "30s", ITERATIONS: "50" });
      expect(fromCsv.durationS).toBe(30);
      const fromModule = await prepare({ ...base, script: mix, csv: path.join(dir.dir, "absent.csv") });
      expect(Object.keys(fromModule.files)).toEqual(["script.mjs"]);
      expect(fromModule.env.SCRIPT).toBe("/load/script.mjs");
      expect(fromModule.env.CSV_PATH).toBeUndefined();
      const plain = await prepare({ ...base, script: "grpc", csv: path.join(dir.dir, "absent.csv") });
      expect(plain.files).toEqual({});
      await expect(prepare({ ...base, csv: path.join(dir.dir, "absent.csv") })).rejects.toThrow(UsageError);
      await expect(prepare({ ...base, script: "rest", duration: "forever" })).rejects.toThrow(/^DURATION: /);
    } finally {
      dir.remove();
    }
  });

  it("refuses bad options with exit 2, naming them, before it looks for a cluster", async () => {
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", "scripts/load-k8s.ts", "--vus", "0"], {
        cwd: repoRoot,
        env: { PATH: process.env.PATH ?? "", HOME: "/nonexistent", KUBECONFIG: "/nonexistent/kubeconfig" },
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.on("close", (code) => resolve({ code, stderr }));
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^load:k8s: VUS: expected a whole number from 1 to 1000/);
  });
});

describe("load:k8s against a stand-in Kubernetes API", () => {
  /**
   * Answers the calls load:k8s makes, as the API server would: the release's gateway Service
   * and Deployment, the objects it creates, the Job's pod (ended with `exitCode`), its log, and
   * the deletes. Records every call.
   */
  async function fakeApiServer(exitCode: number) {
    const calls: string[] = [];
    const created: Record<string, { metadata: { name: string } }> = {};
    let podDeleted = false;
    const server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString()));
      req.on("end", () => {
        const url = new URL(req.url!, "http://api");
        calls.push(`${req.method} ${url.pathname}`);
        const send = (status: number, value: unknown) => {
          res.writeHead(status, { "content-type": "application/json" });
          res.end(JSON.stringify(value));
        };
        const ns = "/api/v1/namespaces/paygate";
        const created1 = /^\/(?:api\/v1|apis\/batch\/v1)\/namespaces\/paygate\/(secrets|configmaps|jobs)$/.exec(url.pathname);
        if (req.method === "GET" && url.pathname === `${ns}/services/paygate-gateway`) return send(200, { kind: "Service", spec: { ports: [{ name: "rpc", port: 8080 }] } });
        if (req.method === "GET" && url.pathname === "/apis/apps/v1/namespaces/paygate/deployments/paygate-gateway") {
          return send(200, { kind: "Deployment", spec: { selector: {}, template: { spec: { containers: [{ name: "gateway", image: "paygate:0.1.0", imagePullPolicy: "Never" }] } } } });
        }
        if (req.method === "POST" && created1) {
          const object = JSON.parse(body) as { metadata: { name: string } };
          created[created1[1]!] = object;
          return send(201, object);
        }
        if (req.method === "GET" && url.pathname === `${ns}/pods`) {
          const items = created.jobs && !podDeleted ? [{ metadata: { name: "load-pod" }, status: { phase: exitCode === 0 ? "Succeeded" : "Failed", containerStatuses: [{ name: "load", image: "", imageID: "", ready: false, restartCount: 0, state: { terminated: { exitCode } } }] } }] : [];
          return send(200, { kind: "PodList", items });
        }
        if (req.method === "GET" && url.pathname === `${ns}/pods/load-pod/log`) {
          res.writeHead(200, { "content-type": "text/plain" });
          return res.end(`payments   20 sent (container ${url.searchParams.get("container")}, follow ${url.searchParams.get("follow")})\n`);
        }
        if (req.method === "DELETE") {
          if (url.pathname === `${ns}/pods`) podDeleted = true;
          return send(200, { kind: "Status", status: "Success" });
        }
        send(404, { kind: "Status", code: 404, message: `no ${req.method} ${url.pathname} here` });
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return { server, calls, created, port: (server.address() as AddressInfo).port };
  }

  it.each([99, 0])("creates the Secret, ConfigMap and Job, streams the pod's log, deletes them all and exits with the runner's code (%i)", async (exitCode) => {
    const api = await fakeApiServer(exitCode);
    const dir = tempDir("paygate-load-k8s-flow-");
    try {
      const kubeconfig = path.join(dir.dir, "kubeconfig");
      writeFileSync(
        kubeconfig,
        `apiVersion: v1\nkind: Config\nclusters: [{name: fake, cluster: {server: "http://127.0.0.1:${api.port}", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: fake, context: {cluster: fake, user: u}}]\ncurrent-context: fake\n`,
      );
      const csv = path.join(dir.dir, "rows.csv");
      writeFileSync(csv, "id,currency,amount,source_account,destination_account\nD-1,USD,1.00,acme_usd,globex_usd\n");
      const result = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, ["--import", "tsx", "scripts/load-k8s.ts", "--script", "csv", "--csv", csv, "--vus", "2", "--duration", "5s", "--thresholds", "p(99)<0.001"], {
          cwd: repoRoot,
          env: { PATH: process.env.PATH ?? "", HOME: dir.dir, KUBECONFIG: kubeconfig, API_KEY: "pgk_flow_key", TX_ID: "FLOW" },
          stdio: ["ignore", "pipe", "pipe"],
        });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        child.on("close", (code) => resolve({ code, stdout, stderr }));
      });
      expect(result.code, result.stderr).toBe(exitCode);
      expect(result.stdout).toBe("payments   20 sent (container load, follow true)\n");
      const name = api.created.jobs!.metadata.name;
      expect(name).toMatch(/^paygate-load-[0-9a-f]{8}$/);
      expect(api.created.secrets!.metadata.name).toBe(name);
      expect(api.created.configmaps).toMatchObject({ metadata: { name }, data: { "rows.csv": expect.stringContaining("D-1,USD,1.00") } });
      const env = (api.created.jobs as unknown as { spec: { template: { spec: { containers: { image: string; imagePullPolicy: string; env: { name: string; value?: string }[] }[] } } } }).spec.template.spec.containers[0]!;
      expect(env.image).toBe("paygate:0.1.0");
      expect(env.imagePullPolicy).toBe("Never");
      expect(Object.fromEntries(env.env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value]))).toEqual({
        PAYMENTS: "http://paygate-gateway.paygate.svc.cluster.local:8080",
        SCRIPT: "csv",
        CSV_PATH: "/load/rows.csv",
        VUS: "2",
        DURATION: "5s",
        TX_ID: "FLOW",
        THRESHOLDS: "p(99)<0.001",
      });
      const writes = api.calls.filter((c) => !c.startsWith("GET"));
      expect(writes).toEqual([
        "POST /api/v1/namespaces/paygate/secrets",
        "POST /api/v1/namespaces/paygate/configmaps",
        "POST /apis/batch/v1/namespaces/paygate/jobs",
        `DELETE /apis/batch/v1/namespaces/paygate/jobs/${name}`,
        "DELETE /api/v1/namespaces/paygate/pods",
        `DELETE /api/v1/namespaces/paygate/configmaps/${name}`,
        `DELETE /api/v1/namespaces/paygate/secrets/${name}`,
      ]);
      expect(result.stderr).toContain(`job/${name} and everything it came with deleted; exit ${exitCode}`);
    } finally {
      api.server.close();
      dir.remove();
    }
  });
});
