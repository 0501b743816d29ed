// The gateway's public origin, for the URLs it hands out (model download links, the x402 resource,
// the wallet-link message's domain). Behind a reverse proxy the request's own origin is the proxy's
// view of the gateway (often http://127.0.0.1:8787, or the proxy's upstream name), so an operator
// sets gateway.publicUrl (e.g. https://api.example.com) and every such URL uses it.
import type { Context } from 'hono'

/** The configured public URL's origin, or the request's own (its scheme and Host header). */
export function publicOrigin(c: Context, configured: URL | undefined): URL {
  return new URL(configured?.origin ?? new URL(c.req.url).origin)
}

/** Checks a configured public URL: http(s), nothing but an origin (the API is served at its root). */
export function parsePublicUrl(value: string): URL {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new Error(`publicUrl ${JSON.stringify(value)} is not a URL`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('publicUrl must be http(s)')
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '' || url.username !== '') {
    throw new Error('publicUrl must be an origin only, like https://api.example.com (the API is served at its root)')
  }
  return url
}
