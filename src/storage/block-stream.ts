// The blocks protocol: model weights between our peers at close to the speed of one libp2p stream.
// A fetching peer keeps one stream per provider and pipelines its wants on it; the provider answers
// each in order from its own blockstore (never the network). Plugged into Helia as its block
// broker, in front of bitswap, so `cat` and `pin` use it with no change; bitswap still serves other
// peers, and fetches when no peer of ours speaks the blocks protocol.
import type {
  BlockBroker,
  BlockRetrievalOptions,
  Blocks,
  CreateSessionOptions,
  Routing,
  SessionBlockBroker,
} from '@helia/interface'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromCID } from '@libp2p/peer-id'
import { type LengthPrefixedStream, lpStream } from '@libp2p/utils'
import { isMultiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { Uint8ArrayList } from 'uint8arraylist'
import {
  BLOCKS_PROTOCOL,
  BLOCKS_STREAM_LIMITS,
  type BlockAnswer,
  decodeAnswer,
  decodeWant,
  encodeAbsentAnswer,
  encodeBlockAnswer,
  encodeWant,
  MAX_ANSWER_BYTES,
  MAX_BLOCK_BYTES,
  MAX_WANT_BYTES,
} from '../../protocols/index.ts'
import {
  DEFAULT_PROVIDER_READ_AHEAD,
  DEFAULT_WANT_TIMEOUT_MS,
  FIND_PROVIDERS_TIMEOUT_MS,
  MAX_FOUND_PROVIDERS,
  MAX_WANTS_PER_PROVIDER,
  MISBEHAVING_PROVIDER_BAN_MS,
} from './constants.ts'

export interface BlockStreamOptions {
  /** Blocks a provider reads from disk ahead of the one it is sending. @default DEFAULT_PROVIDER_READ_AHEAD */
  readAhead?: number
  /** How long a want may wait for its answer before that provider's stream is dropped. @default DEFAULT_WANT_TIMEOUT_MS */
  wantTimeoutMs?: number
}

export interface BlockStreamComponents {
  libp2p: Libp2p
  /** Helia's blockstore: blocks are served from it offline only. */
  blockstore: Blocks
  routing: Pick<Routing, 'findProviders'>
}

/** No peer asked has the block (each answered "absent", or none could be found). */
export class BlockNotFoundError extends Error {
  override name = 'BlockNotFoundError'
}

/** A provider answered with bytes that do not hash to the CID asked for, or too many of them. */
export class InvalidBlockError extends Error {
  override name = 'InvalidBlockError'
}

/** No peer could be asked over the blocks protocol (none connected or named speaks it). */
export class NoBlockProviderError extends Error {
  override name = 'NoBlockProviderError'
}

interface Want {
  resolve: (a: BlockAnswer) => void
  reject: (e: Error) => void
}

/** One stream to one provider: wants go out as they come, answers come back in the same order. */
class ProviderLink {
  private readonly waiting: Want[] = []
  /** Wants waiting for room (at most MAX_WANTS_PER_PROVIDER are in flight). */
  private readonly held: Array<() => void> = []
  closed = false
  /** Blocks this provider has sent us: the ones that did are asked first. */
  served = 0
  /** When it last answered "absent". */
  absentAt = 0

  constructor(
    readonly peer: PeerId,
    private readonly stream: Stream,
    private readonly lp: LengthPrefixedStream<Stream>,
    private readonly timeoutMs: number,
    private readonly onClose: (link: ProviderLink) => void,
  ) {
    void this.readAnswers()
  }

  get pending(): number {
    return this.waiting.length
  }

  static async open(
    libp2p: Libp2p,
    peer: PeerId,
    timeoutMs: number,
    onClose: (link: ProviderLink) => void,
    signal?: AbortSignal,
  ): Promise<ProviderLink> {
    const stream = await libp2p.dialProtocol(peer, BLOCKS_PROTOCOL, signal ? { signal } : {})
    // libp2p 3 hands a stream's data over as it arrives, whether or not it is being read: a busy
    // event loop can find the answers to every want in flight waiting at once. Only what was asked
    // for comes in, so that (plus length prefixes) bounds the buffer.
    const lp = lpStream(stream, {
      maxDataLength: MAX_ANSWER_BYTES,
      maxBufferSize: MAX_WANTS_PER_PROVIDER * (MAX_ANSWER_BYTES + 8),
    })
    return new ProviderLink(peer, stream, lp, timeoutMs, onClose)
  }

  async want(cid: CID, signal?: AbortSignal): Promise<BlockAnswer> {
    while (this.waiting.length >= MAX_WANTS_PER_PROVIDER && !this.closed) {
      await new Promise<void>((r) => this.held.push(r))
    }
    if (this.closed) throw new Error('provider stream closed')
    const answer = new Promise<BlockAnswer>((resolve, reject) => {
      this.waiting.push({ resolve, reject })
    })
    this.lp.write(encodeWant(cid), signal ? { signal } : {}).catch((err: unknown) => this.close(err as Error))
    // The answer still arrives (and is dropped) when the caller gives up; the slot stays in order.
    let timer: NodeJS.Timeout | undefined
    const guards: Promise<never>[] = [
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const err = new Error(`no answer from ${this.peer} within ${this.timeoutMs} ms`)
          this.close(err)
          reject(err)
        }, this.timeoutMs)
      }),
    ]
    if (signal) {
      guards.push(
        new Promise<never>((_, reject) => {
          if (signal.aborted) reject(signal.reason)
          signal.addEventListener('abort', () => reject(signal.reason), { once: true })
        }),
      )
    }
    return Promise.race([answer, ...guards]).finally(() => clearTimeout(timer))
  }

  private async readAnswers(): Promise<void> {
    try {
      for (;;) {
        const frame = await this.lp.read()
        const want = this.waiting.shift()
        if (want == null) throw new Error(`${this.peer} sent an answer to no want`)
        this.held.shift()?.()
        try {
          want.resolve(decodeAnswer(frame))
        } catch (err) {
          want.reject(err as Error)
          throw err
        }
      }
    } catch (err) {
      this.close(err as Error)
    }
  }

  close(err: Error): void {
    if (this.closed) return
    this.closed = true
    for (const w of this.waiting.splice(0)) w.reject(err)
    for (const r of this.held.splice(0)) r()
    this.stream.abort(err)
    this.onClose(this)
  }
}

/**
 * Helia's block broker on our peers: fetches over the blocks protocol, and falls back to `fallback`
 * (bitswap) only when no peer speaking it can be asked.
 */
export class BlockStreamBroker implements BlockBroker {
  readonly name = 'cluster-blocks'
  private readonly links = new Map<string, ProviderLink>()
  private readonly opening = new Map<string, Promise<ProviderLink>>()
  /** Peers that do not speak the protocol, and peers that sent a wrong block, until when. */
  private readonly skip = new Map<string, number>()
  private readonly readAhead: number
  private readonly timeoutMs: number
  private started = false

  constructor(
    private readonly components: BlockStreamComponents,
    private readonly fallback: BlockBroker & { start?(): unknown; stop?(): unknown },
    options: BlockStreamOptions = {},
  ) {
    this.readAhead = options.readAhead ?? DEFAULT_PROVIDER_READ_AHEAD
    this.timeoutMs = options.wantTimeoutMs ?? DEFAULT_WANT_TIMEOUT_MS
  }

  isStarted(): boolean {
    return this.started
  }

  async start(): Promise<void> {
    await this.components.libp2p.handle(BLOCKS_PROTOCOL, (stream) => this.serve(stream), BLOCKS_STREAM_LIMITS)
    this.started = true
  }

  async stop(): Promise<void> {
    this.started = false
    await this.components.libp2p.unhandle(BLOCKS_PROTOCOL)
    for (const link of [...this.links.values()]) link.close(new Error('stopping'))
    await this.fallback.stop?.()
  }

  announce(cid: CID, options?: BlockRetrievalOptions): Promise<void> {
    return this.fallback.announce?.(cid, options) ?? Promise.resolve()
  }

  /** Sessions (not used by `cat` or `pin`) stay bitswap's. */
  createSession(options?: CreateSessionOptions): SessionBlockBroker {
    if (this.fallback.createSession == null) throw new Error(`${this.fallback.name} has no sessions`)
    return this.fallback.createSession(options)
  }

  async retrieve(cid: CID, options: BlockRetrievalOptions = {}): Promise<Uint8Array> {
    try {
      return await this.fetch(cid, options)
    } catch (err) {
      if (!(err instanceof NoBlockProviderError) || this.fallback.retrieve == null) throw err
      return this.fallback.retrieve(cid, options)
    }
  }

  /** Asks providers one after the other until one sends the block; a wrong block bans its sender. */
  private async fetch(cid: CID, options: BlockRetrievalOptions): Promise<Uint8Array> {
    const asked = new Set<string>()
    const maxSize = Math.min(options.maxSize ?? MAX_BLOCK_BYTES, MAX_BLOCK_BYTES)
    let refusals = 0
    /** Peers that could be asked over the protocol (the others do not speak it or are unreachable). */
    const reached = new Set<string>()
    let lastError: Error | undefined
    let searched = false
    for (;;) {
      options.signal?.throwIfAborted()
      let peers = (await this.candidates(options)).filter((p) => !asked.has(p.toString()))
      if (peers.length === 0 && !searched) {
        searched = true
        peers = (await this.findProviders(cid, options)).filter((p) => !asked.has(p.toString()))
      }
      const link = await this.firstLink(peers, asked, options.signal)
      if (link == null) {
        if (reached.size === 0) throw new NoBlockProviderError(`no peer speaking ${BLOCKS_PROTOCOL} to ask for ${cid}`)
        throw new BlockNotFoundError(
          `none of the ${reached.size} peer(s) asked has block ${cid}` +
            (refusals > 0 ? ` (${refusals} sent a block that did not match it)` : ''),
          lastError ? { cause: lastError } : {},
        )
      }
      reached.add(link.peer.toString())
      let answer: BlockAnswer
      try {
        answer = await link.want(cid, options.signal)
      } catch (err) {
        options.signal?.throwIfAborted()
        lastError = err as Error
        continue
      }
      if (answer.type === 'absent') {
        link.absentAt = Date.now()
        continue
      }
      try {
        if (answer.bytes.byteLength > maxSize) throw new InvalidBlockError(`block of ${answer.bytes.byteLength} bytes`)
        await verify(cid, answer.bytes, options)
      } catch (err) {
        // Nothing of it is stored: Helia puts a block only once a broker has returned it.
        refusals++
        lastError = err as Error
        this.skip.set(link.peer.toString(), Date.now() + MISBEHAVING_PROVIDER_BAN_MS)
        link.close(err instanceof InvalidBlockError ? err : new InvalidBlockError(`wrong block for ${cid}`))
        continue
      }
      link.served++
      return answer.bytes
    }
  }

  /** Peers to ask: those named by the caller, then every connected peer that may speak the protocol. */
  private async candidates(options: BlockRetrievalOptions): Promise<PeerId[]> {
    const out = new Map<string, PeerId>()
    for (const p of options.providers ?? []) {
      try {
        const id = await this.peerOf(p, options.signal)
        if (id != null) out.set(id.toString(), id)
      } catch {
        // unreachable: the others may do
      }
    }
    for (const conn of this.components.libp2p.getConnections()) {
      if (conn.status === 'open') out.set(conn.remotePeer.toString(), conn.remotePeer)
    }
    const now = Date.now()
    return [...out.values()].filter((p) => (this.skip.get(p.toString()) ?? 0) < now)
  }

  private async peerOf(p: CID | Multiaddr | Multiaddr[], signal?: AbortSignal): Promise<PeerId | undefined> {
    if (Array.isArray(p) || isMultiaddr(p)) {
      const conn: Connection = await this.components.libp2p.dial(p, signal ? { signal } : {})
      return conn.remotePeer
    }
    return peerIdFromCID(p)
  }

  /** Peers the routing (our DHT) names as providers of `cid`, dialled. */
  private async findProviders(cid: CID, options: BlockRetrievalOptions): Promise<PeerId[]> {
    const signal = AbortSignal.any([
      AbortSignal.timeout(FIND_PROVIDERS_TIMEOUT_MS),
      ...(options.signal ? [options.signal] : []),
    ])
    const found: PeerId[] = []
    try {
      for await (const prov of this.components.routing.findProviders(cid, { signal })) {
        const id = peerIdFromCID(prov.id)
        if (id.equals(this.components.libp2p.peerId)) continue
        try {
          if (prov.multiaddrs.length > 0) await this.components.libp2p.dial(prov.multiaddrs, { signal })
          found.push(id)
        } catch {
          // unreachable
        }
        if (found.length >= MAX_FOUND_PROVIDERS) break
      }
    } catch {
      // timed out or no router: what was found is what there is
    }
    return found
  }

  /**
   * A link to the best of `peers`: the fewest wants in flight, counting a peer that has not served
   * yet as if it had UNTRIED_PROVIDER_RANK (so a second provider is tried once the first one is
   * that busy: blocks then come from both), and one that lacked a block lately last. Peers that
   * cannot be reached or do not speak the protocol are skipped. Every peer tried is added to `asked`.
   */
  private async firstLink(
    peers: PeerId[],
    asked: Set<string>,
    signal?: AbortSignal,
  ): Promise<ProviderLink | undefined> {
    const rank = (p: PeerId): number => {
      const link = this.links.get(p.toString())
      if (link == null) return UNTRIED_PROVIDER_RANK
      if (Date.now() - link.absentAt < ABSENT_MEMORY_MS) return 1e6 + link.pending
      return (link.served > 0 ? 0 : UNTRIED_PROVIDER_RANK) + link.pending
    }
    for (const peer of [...peers].sort((x, y) => rank(x) - rank(y))) {
      asked.add(peer.toString())
      try {
        return await this.link(peer)
      } catch (err) {
        signal?.throwIfAborted()
        if ((err as Error).name === 'UnsupportedProtocolError') {
          this.skip.set(peer.toString(), Date.now() + MISBEHAVING_PROVIDER_BAN_MS)
        }
      }
    }
    return undefined
  }

  private async link(peer: PeerId): Promise<ProviderLink> {
    const key = peer.toString()
    const open = this.links.get(key)
    if (open != null && !open.closed) return open
    let opening = this.opening.get(key)
    if (opening == null) {
      opening = ProviderLink.open(
        this.components.libp2p,
        peer,
        this.timeoutMs,
        (closed) => {
          if (this.links.get(key) === closed) this.links.delete(key)
        },
        // Not the caller's signal: other wants may be waiting for the same stream.
        AbortSignal.timeout(this.timeoutMs),
      )
        .then((link) => {
          this.links.set(key, link)
          return link
        })
        .finally(() => this.opening.delete(key))
      this.opening.set(key, opening)
    }
    return opening
  }

  /** Provider side: answers each want in order, reading up to `readAhead` blocks ahead from disk. */
  private async serve(stream: Stream): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: MAX_WANT_BYTES })
    const queue: Promise<Uint8Array | Uint8ArrayList>[] = []
    let readerDone = false
    let wakeWriter: (() => void) | undefined
    let wakeReader: (() => void) | undefined
    const reader = (async () => {
      try {
        for (;;) {
          while (queue.length >= this.readAhead) await new Promise<void>((r) => (wakeReader = r))
          const cid = decodeWant(await lp.read())
          queue.push(this.load(cid))
          wakeWriter?.()
        }
      } finally {
        readerDone = true
        wakeWriter?.()
      }
    })()
    reader.catch(() => undefined)
    try {
      for (;;) {
        const next = queue[0]
        if (next == null) {
          if (readerDone) break
          await new Promise<void>((r) => (wakeWriter = r))
          continue
        }
        const frame = await next
        queue.shift()
        wakeReader?.()
        await lp.write(frame)
      }
      await stream.close()
    } catch (err) {
      stream.abort(err as Error)
    }
  }

  /** An answer frame for `cid` from this peer's own blocks: never fetched from the network. */
  private async load(cid: CID): Promise<Uint8Array | Uint8ArrayList> {
    try {
      const block = new Uint8ArrayList()
      for await (const chunk of this.components.blockstore.get(cid, { offline: true })) {
        block.append(chunk)
        if (block.byteLength > MAX_BLOCK_BYTES) return encodeAbsentAnswer()
      }
      // One contiguous buffer: the store yields a block in many small chunks, and each buffer in
      // the stream's send queue costs on every slice the muxer takes (profiled: 14 % of the
      // provider's CPU went to shifting the send queue's buffer list). One copy of 1 MiB is cheaper.
      return encodeBlockAnswer(block.subarray())
    } catch {
      return encodeAbsentAnswer()
    }
  }
}

/** A peer not known to serve counts as this many wants in flight when choosing whom to ask. */
const UNTRIED_PROVIDER_RANK = 8

/** How long a peer that answered "absent" is asked only after every other. */
const ABSENT_MEMORY_MS = 10_000

/** Helia's check when it gives one (the hasher of the CID), else ours for sha2-256. */
async function verify(cid: CID, bytes: Uint8Array, options: BlockRetrievalOptions): Promise<void> {
  if (options.validateFn != null) {
    try {
      await options.validateFn(bytes)
    } catch (err) {
      throw new InvalidBlockError(`block does not match ${cid}`, { cause: err })
    }
    return
  }
  if (cid.multihash.code !== sha256.code)
    throw new InvalidBlockError(`cannot check hash 0x${cid.multihash.code.toString(16)}`)
  const digest = await sha256.digest(bytes)
  if (!equalBytes(digest.digest, cid.multihash.digest)) throw new InvalidBlockError(`block does not match ${cid}`)
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0
}
