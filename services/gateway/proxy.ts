import http2 from "node:http2";
import type http from "node:http";
import type { Merchants } from "./merchants.js";
import { apiKeyFrom } from "./merchants.js";

export function paymentsProxy(baseUrl: string, merchants: Merchants) {
  let session: http2.ClientHttp2Session | undefined;
  const connect = () => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(baseUrl);
    s.on("error", () => {});
    s.on("close", () => { if (session === s) session = undefined; });
    session = s;
    return s;
  };
  return (req: http.IncomingMessage, res: http.ServerResponse): boolean => {
    if (req.httpVersionMajor !== 2 || !req.url?.startsWith("/paygate.payments.v1.PaymentsService/")) return false;
    const key = apiKeyFrom((n) => req.headers[n] as string | undefined);
    void merchants.authenticate(key).then((m) => {
      const h: http2.OutgoingHttpHeaders = { ":method": "POST", ":path": req.url };
      for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith(":") && k !== "authorization" && k !== "x-api-key") h[k] = v;
      h["paygate-merchant-id"] = m.id;
      const up = connect().request(h);
      req.pipe(up);
      up.on("response", (rh) => {
        const out: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(rh)) if (!k.startsWith(":") && v !== undefined) out[k] = v as string;
        res.writeHead(Number(rh[":status"]), out);
        up.pipe(res);
      });
    });
    return true;
  };
}
