// The floor of `mesh` (a), node side: the engine exactly as the direct path and a node run it
// (LlamaEngine.load + Scheduler), on the same libp2p peer as ours, answering the inference protocol
// with nothing else — no heartbeats or gossip, no trust or queue-wait rules, no metrics, no logs;
// its done frame carries an unsigned receipt (the floor gateway does not check it). Dials the floor
// gateway, then prints `ready`. Usage: node bin/run-ts.js bench/mesh-floor-node-child.ts DATA_DIR
// MODEL MODEL_ID THREADS SLOTS GATEWAY_MULTIADDR
import { multiaddr } from '@multiformats/multiaddr'
import { LlamaEngine } from '../node/llama-engine.ts'
import { Scheduler } from '../node/scheduler.ts'
import {
  decodeFrames,
  encodeOwnFrame,
  INFERENCE_PROTOCOL,
  type InferenceReplyFrame,
  InferenceRequestFrameSchema,
} from '../protocols/index.ts'
import { createMeshPeer } from '../src/mesh/peer.ts'
import { exitOnSignals } from './child-exit.ts'

const [dataDir, modelPath, modelId, threads, slots, gateway] = process.argv.slice(2)
if (!dataDir || !modelPath || !modelId || !threads || !slots || !gateway) {
  console.error('usage: mesh-floor-node-child.ts DATA_DIR MODEL MODEL_ID THREADS SLOTS GATEWAY_MULTIADDR')
  process.exit(2)
}
const engine = await LlamaEngine.load({
  modelPath,
  modelId,
  threads: Number(threads),
  slots: Number(slots),
  gpu: false,
})
const scheduler = new Scheduler(engine)
const peer = await createMeshPeer({ dataDir, listen: ['/ip4/127.0.0.1/tcp/0'] })
const send = (stream: { send: (b: Uint8Array) => boolean }, frame: InferenceReplyFrame): void => {
  stream.send(encodeOwnFrame<InferenceReplyFrame>(frame))
}
await peer.handle(
  INFERENCE_PROTOCOL,
  async (stream) => {
    try {
      const first = await decodeFrames(stream, InferenceRequestFrameSchema).next()
      if (first.done) return
      const request = first.value
      let sent = false
      const result = await scheduler.submit(
        { messages: request.messages, sampling: request.sampling },
        {
          onDelta: (text, tokens, promptTokens) => {
            send(stream, { type: 'delta', text, tokens, ...(sent ? {} : { promptTokens }) })
            sent = true
          },
        },
      )
      const node = peer.peerId.toString()
      const { promptTokens, completionTokens } = result.usage
      send(stream, {
        type: 'done',
        finishReason: result.finishReason,
        usage: result.usage,
        receipt: {
          v: 1,
          requestId: request.id,
          model: request.model,
          modelSha256: '',
          promptTokens,
          completionTokens,
          gateway: node,
          node,
          issuedAt: Date.now(),
          signature: 'unsigned',
        },
      })
      await stream.close()
    } catch (err) {
      stream.abort(err as Error)
    }
  },
  { maxInboundStreams: 256 },
)
await peer.dial(multiaddr(gateway))
process.stdout.write('ready\n')

exitOnSignals(async () => {
  await peer.stop()
  await engine.close()
})
