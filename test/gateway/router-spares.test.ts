// The router keeps a negotiated inference stream to a node ready for the next request, so that a
// request does not wait a protocol-negotiation round trip on its way to the first token. Checked
// on real libp2p peers: the spare must be open while the current answer is still streaming (a
// client that sends its next request the moment an answer ends must find it ready), and the next
// request must travel on it rather than on a stream opened for it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MeshRouter } from '../../gateway/router.ts'
import {
  decodeFrames,
  encodeOwnFrame,
  INFERENCE_PROTOCOL,
  type InferenceReplyFrame,
  type InferenceRequestFrame,
  InferenceRequestFrameSchema,
} from '../../protocols/index.ts'
import { Directory } from '../../src/mesh/directory.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

/** What the stand-in node saw on each inference stream it was given. */
interface Opened {
  request?: InferenceRequestFrame
  /** Ends the answer: done frame, then close. */
  finish: () => void
}

describe('mesh router spare streams', () => {
  let node: MeshPeer
  let gateway: MeshPeer
  let router: MeshRouter
  const directory = new Directory()
  const opened: Opened[] = []
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const nodeDir = await tempDir('spares-node')
    const gwDir = await tempDir('spares-gw')
    cleanups.push(nodeDir.remove, gwDir.remove)
    node = await createMeshPeer({ dataDir: nodeDir.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
    gateway = await createMeshPeer({ dataDir: gwDir.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
    // A node that answers one delta at once and the rest when the test says so.
    await node.handle(INFERENCE_PROTOCOL, (stream) => {
      let release: () => void = () => undefined
      const finished = new Promise<void>((r) => {
        release = r
      })
      const entry: Opened = { finish: () => release() }
      opened.push(entry)
      void (async () => {
        const frames = decodeFrames(stream, InferenceRequestFrameSchema)
        const first = await frames.next()
        if (first.done) return
        entry.request = first.value
        stream.send(encodeOwnFrame<InferenceReplyFrame>({ type: 'delta', text: 'Hi', tokens: 1, promptTokens: 3 }))
        await finished
        await stream.close()
      })().catch(() => undefined)
    })
    const addr = node.getMultiaddrs()[0]
    if (addr == null) throw new Error('the node listens nowhere')
    await gateway.dial(addr)
    directory.handleHeartbeat({
      v: 1,
      peerId: node.peerId.toString(),
      incarnation: 1,
      seq: 0,
      sentAt: Date.now(),
      intervalMs: 60_000,
      state: 'serving',
      load: { active: 0, queued: 0, slots: 2, maxQueue: 8 },
      capabilitiesVersion: 0,
      models: ['tiny'],
    })
    router = new MeshRouter(gateway, directory, { spareMaxAgeMs: 400 })
  })

  afterAll(async () => {
    directory.stop()
    await Promise.resolve(gateway?.stop())
    await Promise.resolve(node?.stop())
    for (const c of cleanups) await c()
  })

  /** A call on the node, as the chat route opens one (routing picks the node; here there is one). */
  const open = async (frame: InferenceRequestFrame, signal: AbortSignal) => {
    const result = await router.tryNode(node.peerId.toString(), frame, signal)
    if (!('call' in result)) throw new Error(`the node did not answer: ${result.outcome}`)
    return result.call
  }

  const request = (id: string): InferenceRequestFrame => ({
    type: 'request',
    id,
    model: 'tiny',
    messages: [{ role: 'user', content: 'hello' }],
    sampling: { maxTokens: 4 },
  })

  it('opens the next stream while an answer streams, and the next request uses it', async () => {
    const signal = AbortSignal.timeout(10_000)
    const first = await open(request('req-1'), signal)
    expect(first.first).toMatchObject({ type: 'delta', text: 'Hi' })
    // The answer is still under way (the node has not sent done): a second stream is already open
    // and negotiated on the node, waiting for a request.
    await waitFor(() => opened.length === 2, 5_000)
    expect(opened[0]?.request?.id).toBe('req-1')
    expect(opened[1]?.request).toBeUndefined()

    // The answer ends, and the next request goes out at once: on the spare, no new stream.
    opened[0]?.finish()
    for await (const _ of first.rest) {
      // up to the node's end of the stream
    }
    first.close()
    const second = await open(request('req-2'), signal)
    expect(second.first).toMatchObject({ type: 'delta' })
    expect(opened[1]?.request?.id).toBe('req-2')
    // …and that answer in turn prepared the one after it.
    await waitFor(() => opened.length === 3, 5_000)
    expect(opened[2]?.request).toBeUndefined()
    opened[1]?.finish()
    second.close()
  })

  it('after an answer longer than a spare may wait, a fresh spare is ready before the next request', async () => {
    const signal = AbortSignal.timeout(10_000)
    const before = opened.length
    const call = await open(request('req-long'), signal)
    // The spare prepared at the first token, then an answer that outlives it (400 ms here).
    await waitFor(() => opened.length === before + 1, 5_000)
    await new Promise((r) => setTimeout(r, 600))
    opened.at(-2)?.finish()
    for await (const _ of call.rest) {
      // to the end of the answer
    }
    call.close()
    // The stale one is dropped and another is opened now, not when the next request comes.
    await waitFor(() => opened.length === before + 2, 5_000)
    const next = await open(request('req-after-long'), signal)
    expect(next.first).toMatchObject({ type: 'delta' })
    expect(opened[before + 1]?.request?.id).toBe('req-after-long')
    opened[before + 1]?.finish()
    next.close()
  })

  it('no spare is opened to a node that has left, even when a call to it ends afterwards', async () => {
    const signal = AbortSignal.timeout(10_000)
    const call = await open(request('req-before-leaving'), signal)
    const mine = opened.findIndex((o) => o.request?.id === 'req-before-leaving')
    await new Promise((r) => setTimeout(r, 200)) // its spare, opened at the first token
    directory.handleHeartbeat({
      v: 1,
      peerId: node.peerId.toString(),
      incarnation: 1,
      seq: 1,
      sentAt: Date.now(),
      intervalMs: 60_000,
      state: 'leaving',
      load: { active: 1, queued: 0, slots: 2, maxQueue: 8 },
      capabilitiesVersion: 0,
      models: ['tiny'],
    })
    const streams = opened.length
    opened[mine]?.finish()
    for await (const _ of call.rest) {
      // to the end of the answer
    }
    call.close()
    await new Promise((r) => setTimeout(r, 300))
    expect(opened.length).toBe(streams)
  })
})
