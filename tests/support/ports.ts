import { randomInt } from "node:crypto";
import net from "node:net";

// Below the kernel's ephemeral range (32768-60999 on Linux), where outgoing connections take
// their local ports: a port picked there by listen(0) can be taken by any connection before
// the child process that was meant to have it binds it.
const LOW = 20_000;
const HIGH = 32_767;

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/**
 * A port that was free a moment ago, for a child process whose port must be known up front.
 * Picked at random outside the ephemeral range, so neither outgoing connections nor another
 * test worker are likely to take it in between.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = randomInt(LOW, HIGH + 1);
    if (await bindable(port)) return port;
  }
  throw new Error(`no free port found between ${LOW} and ${HIGH}`);
}
