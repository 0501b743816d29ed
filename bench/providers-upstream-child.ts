// The upstream of `providers`: a minimal OpenAI-compatible chat endpoint in a process of its own
// (node:http, keep-alive) that answers at once, so that what a request costs end to end is the
// HTTP round trip plus whatever sits between the client and it. POST <any>/chat/completions:
//  - without "stream": a fixed small chat.completion JSON with usage;
//  - with "stream": true: a role chunk, CHUNKS content chunks ("t0 ", "t1 ", …), a finish chunk, a
//    usage chunk when stream_options.include_usage is set, then `data: [DONE]` — every event its own
//    write, with a setImmediate between writes (so each leaves as its own TCP segment).
// A request for another model than the one expected gets a 400 (the gateway's model mapping is
// checked on every request). Prints `listening PORT`; answers {type: 'stats'} over IPC (below).
// Usage: node bin/run-ts.js bench/providers-upstream-child.ts EXPECTED_MODEL CHUNKS
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { exitOnSignals } from './child-exit.ts'

const expectedModel = process.argv[2] ?? 'llama-3.3-70b-versatile'
const chunks = Number(process.argv[3] ?? 16)
const CREATED = 1_700_000_000

const plainBody = (model: string): string =>
  JSON.stringify({
    id: 'chatcmpl-upstream',
    object: 'chat.completion',
    created: CREATED,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from the upstream.' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 12, completion_tokens: 6, total_tokens: 18 },
  })

const event = (model: string, delta: Record<string, unknown>, finish: string | null): string =>
  `data: ${JSON.stringify({
    id: 'chatcmpl-upstream',
    object: 'chat.completion.chunk',
    created: CREATED,
    model,
    choices: [{ index: 0, delta, finish_reason: finish }],
  })}\n\n`

/** The events of a streamed answer, precomputed per model (the upstream does no work per request). */
const streams = new Map<string, { withUsage: string[]; without: string[] }>()
function streamOf(model: string): { withUsage: string[]; without: string[] } {
  let s = streams.get(model)
  if (s == null) {
    const body = [event(model, { role: 'assistant', content: '' }, null)]
    for (let i = 0; i < chunks; i++) body.push(event(model, { content: `t${i} ` }, null))
    body.push(event(model, {}, 'stop'))
    const usage = `data: ${JSON.stringify({
      id: 'chatcmpl-upstream',
      object: 'chat.completion.chunk',
      created: CREATED,
      model,
      choices: [],
      usage: { prompt_tokens: 12, completion_tokens: chunks, total_tokens: 12 + chunks },
    })}\n\n`
    s = { without: [...body, 'data: [DONE]\n\n'], withUsage: [...body, usage, 'data: [DONE]\n\n'] }
    streams.set(model, s)
  }
  return s
}

function writeEvents(res: ServerResponse, events: string[], i: number): void {
  if (res.destroyed) return
  if (i === events.length - 1) {
    res.end(events[i])
    return
  }
  res.write(events[i] as string)
  setImmediate(writeEvents, res, events, i + 1)
}

function answer(req: IncomingMessage, res: ServerResponse, raw: string): void {
  let body: { model?: unknown; stream?: unknown; stream_options?: { include_usage?: unknown } }
  try {
    body = JSON.parse(raw) as typeof body
  } catch {
    res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":{"message":"bad json"}}')
    return
  }
  if (req.method !== 'POST' || !req.url?.endsWith('/chat/completions')) {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"no route"}}')
    return
  }
  if (body.model !== expectedModel) {
    res
      .writeHead(400, { 'content-type': 'application/json' })
      .end(JSON.stringify({ error: { message: `unexpected model ${String(body.model)}` } }))
    return
  }
  const model = body.model
  if (body.stream === true) {
    const s = streamOf(model)
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    writeEvents(res, body.stream_options?.include_usage === true ? s.withUsage : s.without, 0)
    return
  }
  const text = plainBody(model)
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
}

const server = createServer({ keepAlive: true, keepAliveTimeout: 120_000 }, (req, res) => {
  let raw = ''
  req.setEncoding('utf8')
  req.on('data', (d: string) => {
    raw += d
  })
  req.on('end', () => answer(req, res, raw))
})
let connections = 0
let requests = 0
server.on('connection', () => {
  connections++
})
server.on('request', () => {
  requests++
})
// IPC: {type: 'stats'} → {type: 'stats', connections, requests} (TCP connections accepted and
// requests received so far: the gateway's keep-alive pool should open few connections).
process.on('message', (msg: { type?: string }) => {
  if (msg?.type === 'stats') process.send?.({ type: 'stats', connections, requests })
})
server.keepAliveTimeout = 120_000
server.headersTimeout = 130_000
server.listen(0, '127.0.0.1', () => {
  const addr = server.address()
  process.stdout.write(`listening ${typeof addr === 'object' && addr != null ? addr.port : 0}\n`)
})

exitOnSignals(
  () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    }),
)
