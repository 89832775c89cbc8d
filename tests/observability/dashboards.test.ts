// The Grafana dashboards (grafana/dashboards/*.json) and provisioning (grafana/provisioning/):
// valid dashboard JSON as Grafana provisions it (uid, title, schemaVersion, unique panel ids,
// a layout on the 24-column grid with no overlaps), a `datasource` template variable of type
// prometheus that every panel and every query uses (so the dashboards work against any
// Prometheus), only defined variables referenced, the original four panels per service, and
// provisioning that points Grafana at the dashboards and at a Prometheus data source.
// (Which metric names the queries use is checked against a real scrape in prometheus.test.ts.)
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const grafanaDir = path.join(repoRoot, "grafana");
const dashboardsDir = path.join(grafanaDir, "dashboards");

interface Datasource {
  type?: string;
  uid?: string;
}
interface Target {
  refId?: string;
  expr?: string;
  datasource?: Datasource;
}
interface Panel {
  id?: number;
  type?: string;
  title?: string;
  datasource?: Datasource | null;
  gridPos?: { h: number; w: number; x: number; y: number };
  targets?: Target[];
  panels?: Panel[];
  repeat?: string;
  collapsed?: boolean;
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  datasource?: Datasource;
  current?: { value?: string | string[] };
}
interface Dashboard {
  uid?: string;
  title?: string;
  schemaVersion?: number;
  panels?: Panel[];
  templating?: { list?: Variable[] };
}

const files = readdirSync(dashboardsDir).filter((f) => f.endsWith(".json")).sort();
const dashboards = files.map((file) => ({ file, json: JSON.parse(readFileSync(path.join(dashboardsDir, file), "utf8")) as Dashboard }));

/** Every panel, rows' nested panels included. */
const allPanels = (d: Dashboard): Panel[] => (d.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);

/** `${datasource}` or `$datasource`: the template variable. */
const usesVariable = (ds: Datasource | null | undefined) => ds?.type === "prometheus" && (ds.uid === "${datasource}" || ds.uid === "$datasource");

/** Variables Grafana itself defines. */
const BUILTIN = new Set(["__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__all", "__dashboard", "__from", "__to", "__name"]);

describe("grafana dashboards", () => {
  it("there are dashboards, with unique uids and titles", () => {
    expect(files).toEqual(expect.arrayContaining(["paygate-services.json", "paygate-business.json"]));
    const uids = dashboards.map((d) => d.json.uid);
    const titles = dashboards.map((d) => d.json.title);
    expect(new Set(uids).size).toBe(uids.length);
    expect(new Set(titles).size).toBe(titles.length);
  });

  describe.each(dashboards)("$file", ({ json }) => {
    const panels = allPanels(json);
    const vars = json.templating?.list ?? [];

    it("has a uid, a title and a current schemaVersion", () => {
      expect(json.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
      expect(json.title?.trim()).toBeTruthy();
      expect(json.schemaVersion).toBeGreaterThanOrEqual(36);
      expect(json.schemaVersion).toBeLessThanOrEqual(41);
      // Provisioned dashboards must not carry a database id.
      expect(json).not.toHaveProperty("id", expect.any(Number));
    });

    it("has a `datasource` variable of type prometheus", () => {
      const ds = vars.find((v) => v.name === "datasource");
      expect(ds).toMatchObject({ type: "datasource", query: "prometheus" });
    });

    it("every panel and every query uses the datasource variable", () => {
      expect(panels.length).toBeGreaterThan(0);
      for (const p of panels) {
        expect(usesVariable(p.datasource), `panel ${p.id} "${p.title}": datasource ${JSON.stringify(p.datasource)}`).toBe(true);
        for (const t of p.targets ?? []) expect(usesVariable(t.datasource), `panel ${p.id} "${p.title}" query ${t.refId}`).toBe(true);
      }
      for (const v of vars.filter((v) => v.type === "query")) expect(usesVariable(v.datasource), `variable ${v.name}`).toBe(true);
    });

    it("panel ids are unique positive integers; every non-row panel has queries with unique refIds", () => {
      const ids = panels.map((p) => p.id);
      for (const id of ids) expect(Number.isInteger(id) && id! > 0, `id ${id}`).toBe(true);
      expect(new Set(ids).size).toBe(ids.length);
      for (const p of panels.filter((p) => p.type !== "row")) {
        expect(p.title?.trim(), `panel ${p.id} title`).toBeTruthy();
        const targets = p.targets ?? [];
        expect(targets.length, `panel ${p.id} "${p.title}" queries`).toBeGreaterThan(0);
        for (const t of targets) expect(t.expr?.trim(), `panel ${p.id} ${t.refId} expr`).toBeTruthy();
        const refs = targets.map((t) => t.refId);
        expect(new Set(refs).size, `panel ${p.id} refIds`).toBe(refs.length);
      }
    });

    it("panels sit on the 24-column grid without overlapping", () => {
      const placed = panels.map((p) => ({ p, g: p.gridPos }));
      for (const { p, g } of placed) {
        expect(g, `panel ${p.id} gridPos`).toBeDefined();
        expect(g!.x >= 0 && g!.w > 0 && g!.x + g!.w <= 24 && g!.h > 0 && g!.y >= 0, `panel ${p.id} gridPos ${JSON.stringify(g)}`).toBe(true);
      }
      for (const [i, a] of placed.entries()) {
        for (const b of placed.slice(i + 1)) {
          const overlap = a.g!.x < b.g!.x + b.g!.w && b.g!.x < a.g!.x + a.g!.w && a.g!.y < b.g!.y + b.g!.h && b.g!.y < a.g!.y + a.g!.h;
          expect(overlap, `panels ${a.p.id} and ${b.p.id} overlap`).toBe(false);
        }
      }
    });

    it("queries reference only defined variables; repeated rows repeat over one", () => {
      const defined = new Set(vars.map((v) => v.name));
      const texts = [
        ...panels.flatMap((p) => [p.title ?? "", ...(p.targets ?? []).map((t) => t.expr ?? "")]),
        ...vars.map((v) => (typeof v.query === "string" ? v.query : (v.query?.query ?? ""))),
      ];
      for (const text of texts) {
        for (const m of text.matchAll(/\$\{?([a-zA-Z_][a-zA-Z0-9_]*)/g)) {
          const name = m[1]!;
          expect(defined.has(name) || BUILTIN.has(name), `$${name} in ${text}`).toBe(true);
        }
      }
      for (const p of panels.filter((p) => p.repeat)) expect(defined, `panel ${p.id} repeats over $${p.repeat}`).toContain(p.repeat);
    });
  });

  it("the services dashboard has the original four panels, repeated per service", () => {
    const d = dashboards.find((d) => d.file === "paygate-services.json")!.json;
    const job = d.templating?.list?.find((v) => v.name === "job");
    expect(job).toMatchObject({ type: "query", multi: true, includeAll: true });
    const row = d.panels?.find((p) => p.type === "row" && p.repeat === "job");
    expect(row).toBeDefined();
    // The panels right after the repeated row (up to the next row) are repeated with it.
    const panels = d.panels!;
    const start = panels.indexOf(row!) + 1;
    const end = panels.findIndex((p, i) => i >= start && p.type === "row");
    const repeated = panels.slice(start, end === -1 ? undefined : end);
    expect(repeated.map((p) => p.title)).toEqual(["Request rate", "Error rate (5m)", "Latency p95 / p99", "Requests in the last 5 minutes"]);
    for (const p of repeated) for (const t of p.targets ?? []) expect(t.expr, p.title).toContain('job=~"$job"');
    const exprs = repeated.map((p) => (p.targets ?? []).map((t) => t.expr ?? "").join("\n"));
    expect(exprs[0]).toMatch(/rate\(rpc_server_requests_total\{/);
    expect(exprs[1]).toMatch(/code=~"[^"]*unavailable[^"]*"\}\[5m\]/);
    expect(exprs[2]).toMatch(/histogram_quantile\(0\.95,[\s\S]*histogram_quantile\(0\.99,/);
    expect(exprs[3]).toMatch(/increase\(rpc_server_requests_total\{[^}]*\}\[5m\]\)/);
  });

  it("the business dashboard covers payments, failures, replays, FX, risk and holds", () => {
    const d = dashboards.find((d) => d.file === "paygate-business.json")!.json;
    const exprs = allPanels(d)
      .flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ""))
      .join("\n");
    for (const metric of [
      "paygate_payments_total",
      "paygate_payments_captured_minor_total",
      "paygate_payments_refunded_minor_total",
      "paygate_payments_failed_total",
      "paygate_idempotent_replays_total",
      "paygate_fx_quotes_total",
      "paygate_fx_conversions_total",
      "paygate_risk_decisions_total",
      "paygate_risk_reasons_total",
      "paygate_wallet_open_holds",
      "paygate_wallet_held_minor",
      "paygate_wallet_overdue_holds",
    ]) {
      expect(exprs, metric).toContain(metric);
    }
  });
});

describe("grafana provisioning", () => {
  it("provisions a Prometheus data source whose uid the dashboards' datasource variable defaults to", () => {
    const file = parse(readFileSync(path.join(grafanaDir, "provisioning/datasources/prometheus.yml"), "utf8")) as {
      apiVersion: number;
      datasources: { name: string; uid: string; type: string; url: string; isDefault?: boolean }[];
    };
    expect(file.apiVersion).toBe(1);
    const prom = file.datasources.filter((d) => d.type === "prometheus");
    expect(prom).toHaveLength(1);
    expect(prom[0]!.url).toMatch(/^https?:\/\/[^/]+:9090\/?$/);
    expect(file.datasources.filter((d) => d.isDefault === true)).toHaveLength(1);
    for (const { json } of dashboards) {
      const current = json.templating?.list?.find((v) => v.name === "datasource")?.current?.value;
      expect(current === undefined || current === prom[0]!.uid, `${json.uid}: datasource default ${String(current)}`).toBe(true);
    }
  });

  it("provisions the dashboards folder with a file provider", () => {
    const file = parse(readFileSync(path.join(grafanaDir, "provisioning/dashboards/paygate.yml"), "utf8")) as {
      apiVersion: number;
      providers: { name: string; type: string; folder?: string; options: { path: string } }[];
    };
    expect(file.apiVersion).toBe(1);
    expect(file.providers).toHaveLength(1);
    const provider = file.providers[0]!;
    expect(provider.type).toBe("file");
    expect(provider.options.path).toMatch(/dashboards/);
  });
});
