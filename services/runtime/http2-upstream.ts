// One HTTP/2 session to an upstream, opened on first use and opened again after it closes or
// the upstream sends GOAWAY (calls running on the old one finish there). Used by the unary
// transport (upstream.ts) and the gateway's relay.
import http2 from "node:http2";

export class Http2Upstream {
  private current: http2.ClientHttp2Session | undefined;

  constructor(private readonly url: string) {}

  session(): http2.ClientHttp2Session {
    if (this.current && !this.current.closed && !this.current.destroyed) return this.current;
    const s = http2.connect(this.url);
    s.on("error", () => {}); // every stream on it fails with the error too, and is answered there
    const forget = () => {
      if (this.current === s) this.current = undefined;
    };
    s.once("close", forget);
    s.once("goaway", forget);
    this.current = s;
    return s;
  }

  close(): void {
    this.current?.close();
    this.current = undefined;
  }
}
