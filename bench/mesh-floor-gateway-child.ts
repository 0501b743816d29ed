// The floor of `mesh` (a), gateway side: the least an HTTP front can do to put a chat completion on
// the mesh and stream its tokens back — node:http in; the same libp2p peer as ours (createMeshPeer:
// TCP, noise, yamux); one negotiated stream kept ready per node, as our router keeps; the request
// frame built straight from the JSON body; SSE chunks written as the deltas come. No hono, no
// middleware, no auth, no validation, no routing choice, no metering, no logging. What it adds on
// top of the engine is what any gateway on this runtime, transport and machine adds before doing
// anything of its own. Prints `ready {"url","multiaddrs","apiKey"}` (the key is ignored). Made for
// the bench's sequential requests: one spare at a time, used within its 5 s as ours is.
// Usage: node bin/run-ts.js bench/mesh-floor-gateway-child.ts DATA_DIR
import { createServer } from 'node:http'
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { checkDeltaFrame } from '../protocols/fast-frames.ts'
import {
  decodeFrames,
  encodeOwnFrame,
  INFERENCE_PROTOCOL,
  type InferenceReplyFrame,
  InferenceReplyFrameSchema,
  type InferenceRequestFrame,
  MAX_FRAME_BYTES,
} from '../protocols/index.ts'
import { createMeshPeer } from '../src/mesh/peer.ts'
import { exitOnSignals } from './child-exit.ts'

const dataDir = process.argv[2]
if (!dataDir) {
  console.error('usage: mesh-floor-gateway-child.ts DATA_DIR')
  process.exit(2)
}
const peer = await createMeshPeer({ dataDir, listen: ['/ip4/127.0.0.1/tcp/0'] })
/** The node: the one peer that connects to us. */
let node: string | undefined
peer.addEventListener('peer:connect', (evt) => {
  node = evt.detail.toString()
})
let spare: { stream: Promise<Stream>; at: number } | undefined
const open = (): Promise<Stream> => peer.dialProtocol(peerIdFromString(node ?? ''), INFERENCE_PROTOCOL)
/** A spare, as ours keeps one: opened ahead, used within 5 s, else dropped. */
const prepare = (): void => {
  const stream = open()
  stream.catch(() => undefined) // a spare that fails to open is simply not used
  spare = { stream, at: Date.now() }
}
const take = async (): Promise<Stream> => {
  const s = spare
  spare = undefined
  if (s != null && Date.now() - s.at <= 5_000) {
    const stream = await s.stream.catch(() => undefined)
    if (stream != null && stream.status === 'open') return stream
  } else if (s != null) {
    void s.stream.then((stream) => stream.abort(new Error('stale spare stream'))).catch(() => undefined)
  }
  return open()
}

interface Body {
  model: string
  messages: InferenceRequestFrame['messages']
  max_tokens?: number
  temperature?: number
  seed?: number
}

let served = 0
const server = createServer((req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (d: Buffer) => chunks.push(d))
  req.on('end', () => {
    void (async () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Body
      const id = `chatcmpl-${++served}`
      const created = Math.floor(Date.now() / 1000)
      const chunk = (delta: object, finish: string | null): string =>
        `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: body.model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`
      const stream = await take()
      const frames = decodeFrames(stream, InferenceReplyFrameSchema, MAX_FRAME_BYTES, checkDeltaFrame)
      stream.send(
        encodeOwnFrame<InferenceRequestFrame>({
          type: 'request',
          id,
          model: body.model,
          messages: body.messages,
          sampling: {
            ...(body.max_tokens != null ? { maxTokens: body.max_tokens } : {}),
            ...(body.temperature != null ? { temperature: body.temperature } : {}),
            ...(body.seed != null ? { seed: body.seed } : {}),
          },
        }),
      )
      let first = true
      for await (const f of frames as AsyncGenerator<InferenceReplyFrame>) {
        if (f.type === 'delta') {
          if (first) {
            first = false
            res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
            res.write(chunk({ role: 'assistant', content: '' }, null) + chunk({ content: f.text }, null))
            // The next request's stream, once this one's first token is out (as our router does).
            setImmediate(prepare)
          } else if (f.text.length > 0) res.write(chunk({ content: f.text }, null))
        } else if (f.type === 'done') {
          const { promptTokens, completionTokens } = f.usage
          const usage = {
            prompt_tokens: promptTokens,
            completion_tokens: completionTokens,
            total_tokens: promptTokens + completionTokens,
          }
          res.end(
            `${chunk({}, f.finishReason)}data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: body.model, choices: [], usage })}\n\ndata: [DONE]\n\n`,
          )
          void stream.close().catch(() => undefined)
          return
        } else break
      }
      if (!res.headersSent) res.writeHead(502)
      res.end()
    })().catch(() => {
      if (!res.headersSent) res.writeHead(502)
      res.end()
    })
  })
})
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number }
  const ready = { url: `http://127.0.0.1:${port}`, multiaddrs: peer.getMultiaddrs().map(String), apiKey: '' }
  process.stdout.write(`ready ${JSON.stringify(ready)}\n`)
})

exitOnSignals(async () => {
  server.close()
  await peer.stop()
})
