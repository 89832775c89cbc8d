// Kubernetes schemas for rendered objects: the models of npm `kubernetes-models` and
// `@kubernetes-models/prometheus-operator` (pinned dev dependencies).
//   - validate(): their JSON-schema validators (types, required fields, enums, formats), which
//     let unknown fields through;
//   - unknownFields(): the TypeScript compiler's excess-property check, which does not: every
//     object becomes `const o: IDeployment = { …rendered… }` in a virtual file type-checked
//     against the models' declarations, so a misspelt or misplaced field anywhere is an error.
import path from "node:path";
import ts from "typescript";
import { repoRoot } from "./helm.js";

interface ModelRef {
  /** Module exporting the model class and its interface. */
  module: string;
  className: string;
  interfaceName: string;
}

const k8s = (group: string, kind: string): ModelRef => ({ module: `kubernetes-models/${group}/${kind}`, className: kind, interfaceName: `I${kind}` });
const operator = (kind: string): ModelRef => ({
  module: `@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${kind}`,
  className: kind,
  interfaceName: `I${kind}`,
});

/** Every apiVersion/kind the chart and k8s/ may hold. Anything else is an error in itself. */
export const MODELS: Record<string, ModelRef> = {
  "v1/ConfigMap": k8s("v1", "ConfigMap"),
  "v1/Namespace": k8s("v1", "Namespace"),
  "v1/Pod": k8s("v1", "Pod"),
  "v1/Secret": k8s("v1", "Secret"),
  "v1/Service": k8s("v1", "Service"),
  "v1/ServiceAccount": k8s("v1", "ServiceAccount"),
  "apps/v1/Deployment": k8s("apps/v1", "Deployment"),
  "apps/v1/StatefulSet": k8s("apps/v1", "StatefulSet"),
  "autoscaling/v2/HorizontalPodAutoscaler": k8s("autoscaling/v2", "HorizontalPodAutoscaler"),
  "networking.k8s.io/v1/NetworkPolicy": k8s("networking.k8s.io/v1", "NetworkPolicy"),
  "policy/v1/PodDisruptionBudget": k8s("policy/v1", "PodDisruptionBudget"),
  "rbac.authorization.k8s.io/v1/ClusterRole": k8s("rbac.authorization.k8s.io/v1", "ClusterRole"),
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": k8s("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
  "rbac.authorization.k8s.io/v1/RoleBinding": k8s("rbac.authorization.k8s.io/v1", "RoleBinding"),
  "apiregistration.k8s.io/v1/APIService": k8s("apiregistration.k8s.io/v1", "APIService"),
  "monitoring.coreos.com/v1/ServiceMonitor": operator("ServiceMonitor"),
  "monitoring.coreos.com/v1/PrometheusRule": operator("PrometheusRule"),
};

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

export const typeKey = (o: K8sObject) => `${o.apiVersion}/${o.kind}`;

/** Schema errors of one object (empty when valid). */
export async function schemaErrors(o: K8sObject): Promise<string[]> {
  const ref = MODELS[typeKey(o)];
  if (!ref) return [`no model for ${typeKey(o)}`];
  const mod = (await import(ref.module)) as Record<string, new (data: unknown) => { validate(): void }>;
  try {
    new mod[ref.className]!(o).validate();
    return [];
  } catch (err) {
    return [err instanceof Error ? err.message : String(err)];
  }
}

/**
 * Unknown (or mistyped) fields, found by the TypeScript compiler: one error line per problem,
 * naming the object it is in.
 */
export function unknownFields(objects: { label: string; object: K8sObject }[]): string[] {
  const fileName = path.join(repoRoot, "tests", "k8s", "__rendered_objects__.ts");
  const modules = [...new Set(objects.map(({ object }) => MODELS[typeKey(object)]).filter((m): m is ModelRef => m !== undefined))];
  const alias = new Map(modules.map((m, i) => [m, `T${i}`]));
  const lines = modules.map((m) => `import type { ${m.interfaceName} as ${alias.get(m)} } from "${m.module}";`);
  const starts: { line: number; label: string }[] = [];
  objects.forEach(({ label, object }, i) => {
    const ref = MODELS[typeKey(object)];
    if (!ref) return;
    starts.push({ line: lines.length, label });
    lines.push(...`export const o${i}: ${alias.get(ref)} = ${JSON.stringify(object, null, 1)};`.split("\n"));
  });
  const source = lines.join("\n");

  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    lib: ["lib.es2022.d.ts"],
  };
  const host = ts.createCompilerHost(options, true);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, languageVersion, ...rest) =>
    name === fileName ? ts.createSourceFile(name, source, languageVersion, true) : getSourceFile.call(host, name, languageVersion, ...rest);
  host.fileExists = (name) => name === fileName || fileExists.call(host, name);
  host.readFile = (name) => (name === fileName ? source : readFile.call(host, name));
  const program = ts.createProgram([fileName], options, host);
  const sourceFile = program.getSourceFile(fileName)!;
  return ts
    .getPreEmitDiagnostics(program)
    .filter((d) => d.file === undefined || d.file.fileName === fileName)
    .map((d) => {
      const message = ts.flattenDiagnosticMessageText(d.messageText, "\n  ");
      if (d.file === undefined || d.start === undefined) return message;
      const { line } = sourceFile.getLineAndCharacterOfPosition(d.start);
      const owner = [...starts].reverse().find((s) => s.line <= line);
      return `${owner?.label ?? "(imports)"}: ${lines[line]?.trim()} -> ${message}`;
    });
}
