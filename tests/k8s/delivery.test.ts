// Everything around the chart that delivers Paygate to a cluster, checked statically:
//   - the Dockerfile (pinned bases, production-only runtime, numeric user, the dev target) and
//     .dockerignore (the build gets what its COPY lines name);
//   - the Tiltfile: buildifier parses it and finds it formatted, and what it names exists (files,
//     the chart's workloads and monitoring objects, the dev image's paths, the ports);
//   - kind-config.yaml against the dev values, and k8s/'s manifests against the Kubernetes
//     schemas, unknown fields included;
//   - k8s/load-run.mjs uses the demo merchants the gateway creates.
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { DEMO_MERCHANTS } from "../../services/gateway/demo.js";
import { CHART_CHECKS, helm, repoRoot } from "./helm.js";
import { schemaErrors, unknownFields, type K8sObject } from "./models.js";

const run = promisify(execFile);
const read = (file: string) => readFileSync(path.join(repoRoot, file), "utf8");
const dockerfile = read("Dockerfile");
const tiltfile = read("Tiltfile");
const devValues = parse(read("k8s/paygate-dev-values.yaml")) as {
  image: { repository: string; tag: string };
  components: { gateway: { service: { nodePort: number } } };
  monitoring: { serviceMonitor: { labels: Record<string, string> }; namespaceSelector: { matchLabels: Record<string, string> } };
};

/** The Dockerfile's stages: name -> its lines (continuations joined). */
function stages(): Map<string, { from: string; lines: string[] }> {
  const args = Object.fromEntries([...dockerfile.matchAll(/^ARG (\w+)=(\S+)$/gm)].map((m) => [m[1], m[2]]));
  const result = new Map<string, { from: string; lines: string[] }>();
  let current: { from: string; lines: string[] } | undefined;
  for (const line of dockerfile.replace(/\\\n\s*/g, " ").split("\n")) {
    const from = /^FROM (\S+) AS (\S+)$/.exec(line);
    if (from) {
      current = { from: from[1]!.replace(/^\$\{(\w+)\}$/, (_, a: string) => args[a] ?? a), lines: [] };
      result.set(from[2]!, current);
    } else if (current && line.trim() !== "" && !line.startsWith("#")) current.lines.push(line.trim());
  }
  return result;
}

describe("Dockerfile", () => {
  const all = stages();

  it("builds from pinned images only (an exact Node.js version), runtime last", () => {
    expect([...all.keys()]).toEqual(["deps", "build", "dev", "prod-deps", "runtime"]);
    for (const [name, stage] of all) {
      if (all.has(stage.from)) continue;
      expect(stage.from, name).toMatch(/^node:20\.\d+\.\d+-bookworm-slim$/);
    }
  });

  it("runtime: production dependencies only, the compiled build, no compiler, tsx or npm, a numeric user", () => {
    const runtime = all.get("runtime")!.lines.join("\n");
    expect(all.get("prod-deps")!.lines.join("\n")).toMatch(/npm ci --omit=dev/);
    expect(runtime).toMatch(/^COPY --from=prod-deps \/app\/node_modules \.\/node_modules$/m);
    expect(runtime).toMatch(/^COPY --from=build \/app\/dist \.\/dist$/m);
    expect(runtime).not.toMatch(/--from=(deps|build|dev) \S*node_modules/);
    expect(runtime).toMatch(/rm -rf [^\n]*\/usr\/local\/lib\/node_modules\/npm/);
    expect(runtime).toMatch(/^USER 10001:10001$/m);
    expect(runtime).toMatch(/^CMD \["node", "dist\/services\/gateway\/main\.js"\]$/m);
    // tsx and the compiler are dev dependencies, so `npm ci --omit=dev` leaves them out.
    const pkg = JSON.parse(read("package.json")) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    for (const tool of ["tsx", "typescript", "@bufbuild/buf", "@bufbuild/protoc-gen-es"]) {
      expect(pkg.dependencies[tool], tool).toBeUndefined();
      expect(pkg.devDependencies[tool], tool).toBeDefined();
    }
    for (const [name, version] of Object.entries({ ...pkg.dependencies, ...pkg.devDependencies })) expect(version, `${name} is pinned`).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it("the build stage builds with npm run build; dev runs the sources with tsx as a numeric user", () => {
    expect(all.get("build")!.lines).toContain("RUN npm run build");
    const build = (JSON.parse(read("package.json")) as { scripts: Record<string, string> }).scripts.build!;
    expect(build).toContain("tsc -p tsconfig.build.json");
    const dev = all.get("dev")!.lines.join("\n");
    expect(all.get("dev")!.from).toBe("build");
    expect(dev).toMatch(/^USER 10001:10001$/m);
    expect(dev).toMatch(/tsx", "watch"/);
  });

  it(".dockerignore lets through exactly what the COPY lines name", () => {
    const patterns = read(".dockerignore")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    const included = (file: string) => {
      let keep = true;
      for (const p of patterns) {
        const negated = p.startsWith("!");
        const pattern = negated ? p.slice(1) : p;
        const top = file.split("/")[0]!;
        if (pattern === "*" || pattern === top || pattern === file) keep = negated;
      }
      return keep;
    };
    const sources = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.split(/\s+/));
    expect(sources.length).toBeGreaterThan(5);
    for (const s of sources) {
      expect(existsSync(path.join(repoRoot, s)), `${s} exists`).toBe(true);
      expect(included(s), `${s} reaches the build`).toBe(true);
    }
    for (const secretish of [".git", "node_modules", ".data", "dist", "tests"]) expect(included(secretish), secretish).toBe(false);
  });
});

describe("Tiltfile", () => {
  const buildifier = path.join(path.dirname(createRequire(import.meta.url).resolve("@bazel/buildifier/package.json")), "buildifier.js");

  it("parses and is formatted (buildifier)", async () => {
    await run(process.execPath, [buildifier, "--mode=check", "--lint=off", "--type=default", path.join(repoRoot, "Tiltfile")]);
  });

  it("buildifier does reject a broken Tiltfile (the check is not vacuous)", async () => {
    // No file argument: buildifier reads the file from stdin.
    const child = execFile(process.execPath, [buildifier, "--mode=check", "--lint=off", "--type=default"]);
    child.stdin!.end('docker_build("paygate",\n');
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(code).not.toBe(0);
  });

  it("names files that exist, the dev target, and the dev values' image", () => {
    for (const file of [...tiltfile.matchAll(/"((?:k8s|charts)\/[^"]+)"/g)].map((m) => m[1]!)) expect(existsSync(path.join(repoRoot, file)), file).toBe(true);
    expect(tiltfile).toMatch(/target = "dev"/);
    expect(tiltfile).toMatch(/^IMAGE = "(\S+)"$/m);
    expect(/^IMAGE = "(\S+)"$/m.exec(tiltfile)![1]).toBe(devValues.image.repository);
    // Live update syncs into the dev image's working directory.
    const workdir = /^WORKDIR (\S+)$/m.exec(dockerfile)![1];
    expect(tiltfile).toContain(`sync("services", "${workdir}/services")`);
    expect(tiltfile).toMatch(/fall_back_on\(\["package.json", "package-lock.json"\]\)/);
    // The load-run button is manual and does not run at start-up.
    expect(tiltfile).toMatch(/"load-run",[\s\S]*auto_init = False,[\s\S]*trigger_mode = TRIGGER_MODE_MANUAL/);
  });

  it.skipIf(!CHART_CHECKS)("its resources are the chart's workloads and objects, as its helm command renders them", async () => {
    const release = /^RELEASE = "(\S+)"$/m.exec(tiltfile)![1]!;
    const namespace = /^NAMESPACE = "(\S+)"$/m.exec(tiltfile)![1]!;
    const services = JSON.parse(/^SERVICES = (\[.*\])$/m.exec(tiltfile)![1]!) as string[];
    const out = await helm(["template", release, "charts/paygate", "--namespace", namespace, "--values", "k8s/paygate-dev-values.yaml", "--api-versions", "monitoring.coreos.com/v1", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]);
    expect(out.code, out.stderr).toBe(0);
    const objects = parseAllDocuments(out.stdout).map((d) => d.toJS() as K8sObject).filter(Boolean);
    const has = (kind: string, name: string) => objects.some((o) => o.kind === kind && o.metadata.name === name);
    for (const s of services) expect(has("Deployment", `${release}-${s}`), s).toBe(true);
    expect(has("StatefulSet", `${release}-postgresql`)).toBe(true);
    expect(has("Secret", `${release}-postgresql`)).toBe(true);
    // helm template cannot read back a generated password: each Tiltfile reload would change it
    // under the running database. The dev values fix it.
    const secret = objects.find((o) => o.kind === "Secret") as unknown as { data: Record<string, string> };
    expect(Buffer.from(secret.data.password!, "base64").toString()).toBe((parse(read("k8s/paygate-dev-values.yaml")) as { postgresql: { password: string } }).postgresql.password);
    expect(has("PrometheusRule", release)).toBe(true);
    for (const s of services) expect(has("ServiceMonitor", `${release}-${s}`), s).toBe(true);
    for (const d of ["business", "services"]) expect(has("ConfigMap", `${release}-dashboard-${d}`), d).toBe(true);
    expect(objects.every((o) => o.metadata.namespace === namespace)).toBe(true);
    expect(parse(read("k8s/namespace.yaml")).metadata.name).toBe(namespace);
    // The forwarded ports are the gateway's and the wallet's admin port.
    const port = (s: string, name: string) =>
      (objects.find((o) => o.kind === "Deployment" && o.metadata.name === `${release}-${s}`) as any).spec.template.spec.containers[0].ports.find( // eslint-disable-line @typescript-eslint/no-explicit-any
        (p: { name: string }) => p.name === name,
      ).containerPort;
    expect(tiltfile).toContain(`"gateway": ["8080:${port("gateway", "rpc")}"]`);
    expect(tiltfile).toContain(`"wallet": ["9103:${port("wallet", "admin")}"]`);
    expect(tiltfile).toContain("--wallet-admin http://127.0.0.1:9103");
  });
});

describe("kind-config.yaml and k8s/", () => {
  it("kind maps the dev values' gateway NodePort to the host", () => {
    const kind = parse(read("kind-config.yaml")) as { name: string; nodes: { image: string; extraPortMappings: { containerPort: number; hostPort: number }[] }[] };
    expect(`kind-${kind.name}`).toBe(/^CONTEXT = "(\S+)"$/m.exec(tiltfile)![1]);
    expect(kind.nodes[0]!.image).toMatch(/^kindest\/node:v1\.\d+\.\d+$/);
    expect(kind.nodes[0]!.extraPortMappings.map((m) => m.containerPort)).toContain(devValues.components.gateway.service.nodePort);
  });

  it("the manifests of k8s/ validate against the Kubernetes schemas, unknown fields included", async () => {
    const objects = ["k8s/namespace.yaml", "k8s/metrics-server.yaml"].flatMap((f) => parseAllDocuments(read(f)).map((d) => ({ file: f, object: d.toJS() as K8sObject })));
    expect(objects.length).toBe(10);
    for (const { file, object } of objects) expect(await schemaErrors(object), `${file} ${object.kind}/${object.metadata.name}`).toEqual([]);
    expect(unknownFields(objects.map(({ file, object }) => ({ label: `${file} ${object.kind}/${object.metadata.name}`, object })))).toEqual([]);
    const metricsServer = objects.find((o) => o.object.kind === "Deployment")!.object as unknown as { spec: { template: { spec: { containers: { image: string }[] } } } };
    expect(metricsServer.spec.template.spec.containers[0]!.image).toMatch(/^registry\.k8s\.io\/metrics-server\/metrics-server:v\d+\.\d+\.\d+$/);
  });

  it("kube-prometheus-stack: pinned, and its Prometheus and Grafana find what the chart renders", () => {
    expect(tiltfile).toMatch(/--version \d+\.\d+\.\d+/);
    const stackRelease = /helm upgrade --install (\S+) kube-prometheus-stack/.exec(tiltfile)![1];
    expect(devValues.monitoring.serviceMonitor.labels.release).toBe(stackRelease);
    expect(devValues.monitoring.namespaceSelector.matchLabels["kubernetes.io/metadata.name"]).toBe(/--namespace (\S+) --create-namespace/.exec(tiltfile)![1]);
    const stack = parse(read("k8s/kube-prometheus-stack-values.yaml")) as { grafana: { sidecar: { dashboards: { label: string; labelValue: string; searchNamespace: string } } } };
    const chartValues = parse(read("charts/paygate/values.yaml")) as { monitoring: { dashboards: { labels: Record<string, string> } } };
    const { label, labelValue, searchNamespace } = stack.grafana.sidecar.dashboards;
    expect(chartValues.monitoring.dashboards.labels[label]).toBe(labelValue);
    expect(searchNamespace).toBe("ALL");
  });

  it("load-run.mjs parses and pays with the demo merchants' keys", async () => {
    await run(process.execPath, ["--check", path.join(repoRoot, "k8s/load-run.mjs")]);
    const script = read("k8s/load-run.mjs");
    for (const m of DEMO_MERCHANTS) expect(script).toContain(`{ id: "${m.id}", key: "${m.apiKey}"`);
    expect(parse(read("k8s/paygate-dev-values.yaml")).components.gateway.env.GATEWAY_DEMO_DATA).toBe("true");
  });
});
