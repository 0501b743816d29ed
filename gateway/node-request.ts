// The chat route's request, read from Node's own objects when the app runs on @hono/node-server.
// Touching `c.req.raw.body`, `.signal` or `c.req.json()` there turns its lightweight request into a
// full WHATWG Request (headers copied, an AbortController, the body piped through web streams):
// ~0.3–0.4 ms per request on the path to the first token. These read the same things directly;
// anywhere else (app.request() in tests, other runtimes) they fall back to the standard API.
import { IncomingMessage, ServerResponse } from 'node:http'
import type { Context } from 'hono'
import { invalidRequest } from './errors.ts'

interface NodeBindings {
  incoming?: unknown
  outgoing?: unknown
}

export function nodeBindings(c: Context): { incoming: IncomingMessage; outgoing: ServerResponse } | undefined {
  const env = c.env as NodeBindings | undefined
  if (env?.incoming instanceof IncomingMessage && env.outgoing instanceof ServerResponse) {
    return { incoming: env.incoming, outgoing: env.outgoing }
  }
  return undefined
}

/**
 * A request header, as c.req.header(name) gives it (a repeated header's values joined with ", ",
 * any case of name). On @hono/node-server it is read from Node's own parsed headers: hono's
 * c.req.header() first builds a WHATWG Headers object from all of them (~30 µs of the first token's
 * path, for the few the middleware reads). Node's distinct values, not its `headers`, which keep only
 * the first of a repeated Authorization: two of them stay one value no bearer token matches.
 */
export function requestHeader(c: Context, name: string): string | undefined {
  const node = nodeBindings(c)
  if (node == null) return c.req.header(name)
  return node.incoming.headersDistinct[name.toLowerCase()]?.join(', ')
}

/** The request body parsed as JSON (throws on invalid JSON, as c.req.json() does). */
export async function readJsonBody(c: Context): Promise<unknown> {
  const node = nodeBindings(c)
  // Only a body nobody has started reading (hono's bodyLimit reads chunked bodies itself).
  if (node == null || node.incoming.readableDidRead || node.incoming.readableEnded) return c.req.json()
  const chunks: Buffer[] = []
  for await (const chunk of node.incoming) chunks.push(chunk as Buffer)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

/** The JSON body of an inference request: 400 when it is not JSON (its schema checks it is an object). */
export async function readJsonObject(c: Context): Promise<Record<string, unknown>> {
  try {
    return (await readJsonBody(c)) as Record<string, unknown>
  } catch {
    throw invalidRequest('The request body is not valid JSON.')
  }
}

/** Aborted when the client goes away before the response is complete (as c.req.raw.signal is). */
export function clientSignal(c: Context): AbortSignal {
  const node = nodeBindings(c)
  if (node == null) return c.req.raw.signal
  const { incoming, outgoing } = node
  const controller = new AbortController()
  outgoing.once('close', () => {
    if (incoming.errored) controller.abort(String(incoming.errored))
    else if (!outgoing.writableFinished) controller.abort('Client connection prematurely closed.')
  })
  return controller.signal
}
