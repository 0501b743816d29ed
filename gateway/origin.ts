// The gateway's public origin, for the URLs it hands out (model download links, the x402 resource,
// the wallet-link message's domain). Behind a reverse proxy the request's own origin is the proxy's
// view of the gateway (often http://127.0.0.1:8787, or the proxy's upstream name), so an operator
// sets gateway.publicUrl (e.g. https://api.example.com) and every such URL uses it.
import type { Context } from 'hono'

/** The configured public URL's origin, or the request's own (its scheme and Host header). */
export function publicOrigin(c: Context, configured: URL | undefined): URL {
  return new URL(configured?.origin ?? new URL(c.req.url).origin)
}
