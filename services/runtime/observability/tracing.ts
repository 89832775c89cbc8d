// OpenTelemetry in a Paygate process: the SDK (NodeSDK, traces only), the exporters the
// environment asks for, the span processors tests add, flushing and shutting down. The spans
// themselves are made by Paygate's own code: spans.ts (the tracer, INTERNAL spans),
// rpc-spans.ts (RPCs served, called and relayed) and http-spans.ts (plain HTTP routes).
//
// Configuration: only the standard OTEL_* environment variables (read from process.env).
//   - A tracer provider, a propagator and an AsyncLocalStorage context manager are always
//     installed, so trace ids exist for logs and travel on every hop even when nothing is
//     exported. OTEL_PROPAGATORS picks the propagators (tracecontext, baggage, b3, b3multi,
//     jaeger, none); unset, W3C trace context only (traceparent/tracestate): baggage a client
//     sends is not carried into the internal services.
//   - Nothing is exported unless asked for: an OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT
//     or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (or OTEL_TRACES_EXPORTER=otlp, which then
//     sends to the default endpoint); OTEL_TRACES_EXPORTER=console prints spans; "none" turns
//     exporting off. OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL: http/protobuf (default, port
//     4318), http/json (4318) or grpc (4317). Headers, timeout, compression and certificates
//     (OTEL_EXPORTER_OTLP_*) are read by the exporters, batching (OTEL_BSP_*) by the batch
//     processor; sampling (OTEL_TRACES_SAMPLER[_ARG], default parentbased_always_on), span
//     limits and the resource by the SDK: Paygate's service.name (the service's name) and
//     service.namespace, then what the resource detectors find (OTEL_NODE_RESOURCE_DETECTORS,
//     default env, process and host; the env detector reads OTEL_SERVICE_NAME and
//     OTEL_RESOURCE_ATTRIBUTES, which win). OTEL_SDK_DISABLED=true installs nothing.
//     OTEL_LOG_LEVEL (default warn) sets how much the SDK reports about itself, through the
//     service's logger. Metrics stay Prometheus (/metrics) and logs JSON lines on stdout: the
//     SDK's metric and log providers are not configured (OTEL_METRICS_EXPORTER and
//     OTEL_LOGS_EXPORTER are not read).
//   - With nothing to export and no OTEL_TRACES_SAMPLER, spans are not recorded (their ids
//     still reach logs and upstreams, marked not sampled) unless a span processor is added in
//     process (tests): recording spans nobody reads cost about 5% of a service's CPU.
//   - Several servers in one process (the end-to-end test stack) share one SDK: the first to
//     start names the resource; spans tell the services apart by rpc.service. `npm start`
//     runs each service as a process of its own, so each has its own resource there.
// No instrumentation package is loaded (no HTTP auto-instrumentation): Paygate's interceptors
// make the RPC spans, so no duplicate HTTP server span exists.
import { diag, DiagLogLevel, type Context } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import type { NodeSDK } from "@opentelemetry/sdk-node";
import {
  BatchSpanProcessor,
  ConsoleSpanExporter,
  SamplingDecision,
  type ReadableSpan,
  type Sampler,
  type SamplingResult,
  type Span as SdkSpan,
  type SpanExporter,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";
import { ConfigError } from "../config.js";
import type { Logger } from "./logger.js";

/**
 * Span processors that can be added after start-up (tests add an in-memory exporter). With
 * none, an ended span goes nowhere: the cost of a span is its creation.
 */
class Processors implements SpanProcessor {
  readonly list: SpanProcessor[] = [];
  onStart(span: SdkSpan, parent: Context): void {
    for (const p of this.list) p.onStart(span, parent);
  }
  onEnd(span: ReadableSpan): void {
    for (const p of this.list) p.onEnd(span);
  }
  async forceFlush(): Promise<void> {
    await Promise.all(this.list.map((p) => p.forceFlush()));
  }
  async shutdown(): Promise<void> {
    await Promise.all(this.list.map((p) => p.shutdown()));
  }
}

interface TracingState {
  processors: Processors;
  /** Set once initTracing ran (whatever it found in the environment). */
  init?: Promise<void>;
  sdk?: NodeSDK;
  serviceName?: string;
  /** What exports spans: "otlp http/protobuf", "otlp http/json", "otlp grpc", "console". */
  exporters: string[];
}

// One state per process, even if this module is evaluated twice (the OpenTelemetry API's
// globals are per process too).
const STATE = Symbol.for("paygate.tracing");
const state: TracingState = ((globalThis as Record<symbol, unknown>)[STATE] ??= { processors: new Processors(), exporters: [] }) as TracingState;

/** The environment variable's value, with an empty string counting as unset. */
const envVar = (name: string): string | undefined => {
  const v = process.env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
};

const OTLP_PROTOCOLS = ["http/protobuf", "http/json", "grpc"] as const;
type OtlpProtocol = (typeof OTLP_PROTOCOLS)[number];
const isOtlpProtocol = (p: string): p is OtlpProtocol => (OTLP_PROTOCOLS as readonly string[]).includes(p);

/** The exporters the environment asks for; throws a ConfigError naming a bad value. */
export function exportersFromEnv(): ({ kind: "otlp"; protocol: OtlpProtocol } | { kind: "console" })[] {
  const raw = envVar("OTEL_TRACES_EXPORTER");
  const endpoint = envVar("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") ?? envVar("OTEL_EXPORTER_OTLP_ENDPOINT");
  // The specification's default is "otlp"; Paygate sends nothing until an endpoint (or the
  // exporter) is named.
  const names = raw === undefined ? (endpoint ? ["otlp"] : []) : raw.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== "");
  if (names.includes("none")) return [];
  const out: ReturnType<typeof exportersFromEnv> = [];
  for (const name of new Set(names)) {
    if (name === "console") out.push({ kind: "console" });
    else if (name === "otlp") {
      const variable = envVar("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") !== undefined ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" : "OTEL_EXPORTER_OTLP_PROTOCOL";
      const protocol = envVar(variable) ?? "http/protobuf";
      if (!isOtlpProtocol(protocol)) {
        throw new ConfigError(`invalid configuration:\n  ${variable}: expected http/protobuf or http/json (OTLP over HTTP, port 4318) or grpc (port 4317), got ${JSON.stringify(protocol)}`);
      }
      out.push({ kind: "otlp", protocol });
    } else {
      throw new ConfigError(`invalid configuration:\n  OTEL_TRACES_EXPORTER: expected otlp, console or none, got ${JSON.stringify(raw)}`);
    }
  }
  return out;
}

/**
 * The exporter for one choice of exportersFromEnv, with its name for the listening log line.
 * The OTLP exporters read their endpoint, headers, timeout and compression from OTEL_*.
 */
async function createExporter(choice: ReturnType<typeof exportersFromEnv>[number]): Promise<{ name: string; exporter: SpanExporter }> {
  if (choice.kind === "console") return { name: "console", exporter: new ConsoleSpanExporter() };
  const name = `otlp ${choice.protocol}`;
  switch (choice.protocol) {
    case "grpc": {
      const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-grpc");
      return { name, exporter: new OTLPTraceExporter() };
    }
    case "http/json": {
      const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http");
      return { name, exporter: new OTLPTraceExporter() };
    }
    case "http/protobuf": {
      const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-proto");
      return { name, exporter: new OTLPTraceExporter() };
    }
  }
}

const DIAG_LEVELS: Record<string, DiagLogLevel> = {
  none: DiagLogLevel.NONE,
  error: DiagLogLevel.ERROR,
  warn: DiagLogLevel.WARN,
  info: DiagLogLevel.INFO,
  debug: DiagLogLevel.DEBUG,
  verbose: DiagLogLevel.VERBOSE,
  all: DiagLogLevel.ALL,
};

/** The SDK's own complaints (an unreachable collector, a bad sampler name) as log lines. */
function diagnostics(logger: Logger): void {
  const level = DIAG_LEVELS[(envVar("OTEL_LOG_LEVEL") ?? "warn").toLowerCase()] ?? DiagLogLevel.WARN;
  // Arguments may be errors or response bodies: their messages only.
  const text = (msg: string, args: unknown[]) =>
    [msg, ...args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : ""))].filter((s) => s !== "").join(" ");
  const at = (fn: "error" | "warn" | "info" | "debug") => (msg: string, ...args: unknown[]) => logger[fn](`opentelemetry: ${text(msg, args)}`);
  diag.setLogger({ error: at("error"), warn: at("warn"), info: at("info"), debug: at("debug"), verbose: at("debug") }, { logLevel: level, suppressOverrideMessage: true });
}

/**
 * Runs `fn` (the SDK's constructor) with OTEL_LOG_LEVEL out of its sight: seeing it, the
 * constructor would send the SDK's diagnostics to the console, in plain text among the JSON
 * log lines on stdout, in place of the service's logger (diagnostics() reads the level).
 */
function withoutConsoleDiagnostics<T>(fn: () => T): T {
  const level = process.env.OTEL_LOG_LEVEL;
  delete process.env.OTEL_LOG_LEVEL;
  try {
    return fn();
  } finally {
    if (level !== undefined) process.env.OTEL_LOG_LEVEL = level;
  }
}

/**
 * Installs OpenTelemetry in this process, once (later calls wait for the first and change
 * nothing). `serviceName` names the resource unless OTEL_SERVICE_NAME does. Throws a
 * ConfigError for an OTEL_* value it cannot honour.
 */
export function initTracing(serviceName: string, logger: Logger): Promise<void> {
  return (state.init ??= (async () => {
    if (envVar("OTEL_SDK_DISABLED")?.toLowerCase() === "true") return;
    const wanted = exportersFromEnv();
    // Loaded only when tracing is on.
    const { NodeSDK } = await import("@opentelemetry/sdk-node");
    const observedOnly = wanted.length === 0 && envVar("OTEL_TRACES_SAMPLER") === undefined;
    diagnostics(logger);
    const sdk = withoutConsoleDiagnostics(
      () =>
        new NodeSDK({
          // Under what the detectors find: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
          resource: defaultResource().merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: serviceName, "service.namespace": "paygate" })),
          spanProcessors: [state.processors],
          ...(observedOnly ? { sampler: new RecordWhenObserved() } : {}),
          ...(envVar("OTEL_PROPAGATORS") === undefined ? { textMapPropagator: new W3CTraceContextPropagator() } : {}),
          // Traces only: without these the SDK would start OTLP metric and log exporters.
          metricReaders: [],
          logRecordProcessors: [],
        }),
    );
    const exporters = await Promise.all(wanted.map(createExporter));
    for (const { exporter } of exporters) state.processors.list.push(new BatchSpanProcessor(exporter));
    sdk.start();
    state.sdk = sdk;
    state.serviceName = serviceName;
    state.exporters = exporters.map((e) => e.name);
  })());
}

/** Records (and samples) spans only while a span processor is attached: nothing else reads them. */
class RecordWhenObserved implements Sampler {
  shouldSample(): SamplingResult {
    return { decision: state.processors.list.length > 0 ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.NOT_RECORD };
  }
  toString(): string {
    return "RecordWhenObserved";
  }
}

/** What initTracing set up (undefined before it ran or when OTEL_SDK_DISABLED=true). */
export function tracingInfo(): { serviceName: string; exporters: readonly string[] } | undefined {
  return state.sdk ? { serviceName: state.serviceName!, exporters: [...state.exporters] } : undefined;
}

/**
 * Adds a span processor (e.g. a SimpleSpanProcessor over an InMemorySpanExporter, in tests);
 * returns a function that removes it again.
 */
export function addSpanProcessor(processor: SpanProcessor): () => void {
  state.processors.list.push(processor);
  return () => {
    const i = state.processors.list.indexOf(processor);
    if (i >= 0) state.processors.list.splice(i, 1);
  };
}

/** Sends the spans ended so far (bounded by `timeoutMs`; never throws). */
export async function flushTracing(timeoutMs = 5_000): Promise<void> {
  if (!state.sdk) return;
  // Every span processor of the SDK's tracer provider is among these.
  await bounded(state.processors.forceFlush(), timeoutMs);
}

/** Flushes and stops the exporters: for the very end of a process. */
export async function shutdownTracing(timeoutMs = 5_000): Promise<void> {
  if (!state.sdk) return;
  await bounded(state.sdk.shutdown(), timeoutMs);
}

async function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}
