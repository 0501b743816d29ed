// The chat route's event stream. On @hono/node-server the events are written straight to Node's
// ServerResponse: hono's streamSSE passes each write through a TransformStream and the adapter's
// reader loop, and the adapter sends the headers in a write of their own (~0.5 ms on the path to
// the first token). Here the headers leave with the first event, in one write. Elsewhere
// (app.request() in tests, other runtimes) it is streamSSE.
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response'
import type { Context } from 'hono'
import { streamSSE } from 'hono/streaming'
import { nodeBindings } from './node-request.ts'

/** Where a route writes its events. */
export interface EventSink {
  /**
   * Writes complete SSE events (`data: …\n\n`). Resolves when the client can take more (after a
   * full socket buffer has drained); once the client is gone it resolves at once and drops them.
   */
  write(text: string): Promise<void>
}

/** The headers every event stream carries, as streamSSE sets them. */
const SSE_HEADERS = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'transfer-encoding': 'chunked',
} as const

/**
 * Answers with an event stream written by `run`. The headers set on `c` so far (by middleware and
 * the route) are sent with it; later ones are not. With streamSSE, `cancel` is aborted when the
 * client goes away; on Node the route learns that from clientSignal(c) (the response's close).
 */
export function streamEvents(c: Context, cancel: AbortController, run: (sink: EventSink) => Promise<void>): Response {
  const node = nodeBindings(c)
  if (node == null) {
    return streamSSE(c, async (sse) => {
      sse.onAbort(() => cancel.abort())
      await run({ write: async (text) => void (await sse.write(text)) })
    })
  }
  // The client going away reaches the route through clientSignal(c) (the response's close).
  const res = node.outgoing
  const head: OutgoingHttpHeaders = {}
  const prepared = c.res.headers
  prepared.forEach((value, name) => {
    head[name] = value
  })
  const cookies = prepared.getSetCookie()
  if (cookies.length > 0) head['set-cookie'] = cookies
  Object.assign(head, SSE_HEADERS)
  // Stored, not sent: Node sends the header block together with the first write.
  res.writeHead(200, head)
  const sink = new NodeEventSink(res)
  void run(sink)
    .catch((err) => console.error(err))
    .finally(() => sink.end())
  return RESPONSE_ALREADY_SENT
}

class NodeEventSink implements EventSink {
  constructor(private readonly res: ServerResponse) {}

  private get gone(): boolean {
    return this.res.destroyed || this.res.writableEnded
  }

  async write(text: string): Promise<void> {
    if (this.gone) return
    if (this.res.write(text)) return
    // Backpressure: the socket's buffer is full. Wait until it drains, or the client is gone.
    const res = this.res
    await new Promise<void>((resolve) => {
      const done = (): void => {
        res.off('drain', done)
        res.off('close', done)
        resolve()
      }
      res.on('drain', done)
      res.on('close', done)
    })
  }

  end(): void {
    if (!this.gone) this.res.end()
  }
}
